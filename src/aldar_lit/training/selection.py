"""Checkpoint selection: which LoRA-only checkpoints are kept, reading them safely, and restoring the best one.

Checkpoints go through `SDXLLoRAModule.on_save_checkpoint`, so every file here holds only the LoRA
tensors plus optimizer and loop state: plain tensors and containers, which `torch.load(weights_only=True)`
reads without running any code from the file.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from aldar_lit.atomic_write import open_for_replace
from aldar_lit.config import LoraConfig
from aldar_lit.training.validation import SCORE_KEY

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint's content, loaded with `weights_only=True` (memory-mapped: cheap to inspect).

    A file holding anything but tensors and plain containers (e.g. a pickle whose `__reduce__` runs
    code) is refused without running any of it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: no such checkpoint file") from err
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused to load: it holds Python objects other than tensors and plain "
                              "containers, which could run code (torch.load weights_only=True); a checkpoint "
                              "written by this project never does") from err
    except Exception as err:  # not a torch.save zip file: truncated, another format, not a checkpoint
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from err


LORA_SHAPE_KEYS = ("rank", "unet_targets", "text_encoder_targets")


def lora_shape(lora: dict[str, Any]) -> dict[str, Any]:
    """What fixes the adapter tensors' names and sizes: rank and targets (none in the text encoders if frozen)."""
    return {"rank": lora["rank"], "unet_targets": list(lora["unet_targets"]),
            "text_encoder_targets": list(lora["text_encoder_targets"]) if lora["train_text_encoders"] else []}


def check_lora_fits(checkpoint: dict[str, Any], lora: LoraConfig, path: str | Path) -> None:
    """Raise `CheckpointError` in one sentence when the checkpoint's LoRA rank or targets differ from `lora`'s."""
    saved = checkpoint.get("hyper_parameters", {}).get("lora")
    if saved is None:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no LoRA settings in its hyper_parameters)")
    theirs, ours = lora_shape(saved), lora_shape(vars(lora))
    if theirs != ours:
        raise CheckpointError(
            f"{path} holds a LoRA of rank {theirs['rank']} on UNet targets {theirs['unet_targets']} and text-encoder "
            f"targets {theirs['text_encoder_targets']}, but this run has lora.rank={ours['rank']}, "
            f"lora.unet_targets={ours['unet_targets']} and text-encoder targets {ours['text_encoder_targets']}: "
            "set the lora.* options to the checkpoint's"
        )


class StepCheckpoint(L.Callback):
    """Saves `step-NNNNNN.ckpt` at each listed global step (the technical justification's checkpoint-200/400/800/1500).

    Steps that the periodic `ModelCheckpoint(every_n_train_steps=every_n)` saves anyway are left to it.
    """

    def __init__(self, steps: Iterable[int], dirpath: str | Path, every_n: int | None = None):
        self.steps = {step for step in steps if not (every_n and step % every_n == 0)}
        self.dirpath = Path(dirpath)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        path = self.dirpath / f"step-{trainer.global_step:06d}.ckpt"
        if trainer.global_step in self.steps and not path.exists():
            trainer.save_checkpoint(path)


class BestScoreCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose top-k survive a resume into another directory.

    Lightning keys the top-k state by `dirpath` and drops it when a run resumes elsewhere (the best score
    is lost, and the old best path comes back without it). Here the previous run's top-k files are linked
    (or copied) into this run's directory and ranked as before, so the new directory holds the whole
    selection and the old run's files are never touched.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        previous_dir = state_dict.get("dirpath", self.dirpath)
        if previous_dir != self.dirpath:
            state_dict = self._adopted(state_dict, previous_dir)
        super().load_state_dict(state_dict)

    def _adopted(self, state_dict: dict[str, Any], previous_dir: str) -> dict[str, Any]:
        os.makedirs(self.dirpath, exist_ok=True)
        best_k = {}
        for old_path, score in state_dict.get("best_k_models", {}).items():
            new_path = os.path.join(self.dirpath, os.path.basename(old_path))
            if not os.path.isfile(old_path):
                warnings.warn(f"{old_path}: a top-{self.save_top_k} checkpoint of the run resumed from is gone; "
                              "it is left out of the selection")
                continue
            if not os.path.exists(new_path):
                link_or_copy(old_path, new_path)
            best_k[new_path] = score
        log.info("resumed the %s selection of %s: %d checkpoints linked into %s", self.monitor, previous_dir,
                 len(best_k), self.dirpath)
        if not best_k:
            return {**state_dict, "dirpath": self.dirpath, "best_k_models": {}, "best_model_path": "",
                    "best_model_score": None, "kth_best_model_path": "", "last_model_path": ""}
        worst_first = sorted(best_k, key=lambda path: float(best_k[path]), reverse=self.mode == "min")
        return {**state_dict, "dirpath": self.dirpath, "best_k_models": best_k, "best_model_path": worst_first[-1],
                "best_model_score": best_k[worst_first[-1]], "kth_best_model_path": worst_first[0],
                "kth_value": best_k[worst_first[0]], "last_model_path": ""}


def link_or_copy(source: str, target: str) -> None:
    """A hard link where both are on one filesystem (no space used), else a complete copy under the final name."""
    try:
        os.link(source, target)
    except OSError:
        with open(source, "rb") as reader, open_for_replace(target) as writer:
            shutil.copyfileobj(reader, writer)


def best_score_checkpoint(dirpath: str | Path, every_n_steps: int, top_k: int) -> BestScoreCheckpoint:
    """Keeps the `top_k` checkpoints by `val/score` (higher is better), evaluated with the validation cadence.

    Place it after `ValidationSampler` in the callback list (Lightning runs checkpoint callbacks last anyway),
    so the score logged at a step is the one it ranks.
    """
    return BestScoreCheckpoint(
        dirpath=dirpath,
        filename="best-step={step}-score={val/score:.4f}",
        auto_insert_metric_name=False,
        monitor=SCORE_KEY,
        mode="max",
        save_top_k=top_k,
        every_n_train_steps=every_n_steps,
        save_last=False,
    )


def load_checkpoint_weights(module: L.LightningModule, path: str | Path) -> int:
    """Put a LoRA-only checkpoint's adapter weights into `module`; returns the checkpoint's global step.

    Errors (`CheckpointError`) name `path`: an unsafe or unreadable file, or a LoRA of another shape.
    """
    checkpoint = read_checkpoint(path)
    check_lora_fits(checkpoint, module.lora_cfg, path)
    try:
        module.on_load_checkpoint(checkpoint)  # names the missing LoRA tensors if the checkpoint does not fit
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    result = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: tensors this model does not have, e.g. {result.unexpected_keys[0]}")
    return int(checkpoint["global_step"])
