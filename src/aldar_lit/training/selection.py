"""Checkpoint selection: which LoRA-only checkpoints are kept, and restoring the best one for export.

Checkpoints go through `SDXLLoRAModule.on_save_checkpoint`, so every file here holds only the LoRA
tensors plus optimizer and loop state.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from aldar_lit.training.validation import SCORE_KEY


class StepCheckpoint(L.Callback):
    """Saves `step-NNNNNN.ckpt` at each listed global step (the seed's checkpoint-200/400/800/1500).

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


def best_score_checkpoint(dirpath: str | Path, every_n_steps: int, top_k: int) -> ModelCheckpoint:
    """Keeps the `top_k` checkpoints by `val/score` (higher is better), evaluated with the validation cadence.

    Place it after `ValidationSampler` in the callback list (Lightning runs checkpoint callbacks last anyway),
    so the score logged at a step is the one it ranks.
    """
    return ModelCheckpoint(
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
    """Put a LoRA-only checkpoint's adapter weights into `module`; returns the checkpoint's global step."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    module.on_load_checkpoint(checkpoint)  # names the missing LoRA tensors if the checkpoint does not fit
    result = module.load_state_dict(checkpoint["state_dict"], strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path}: tensors this model does not have, e.g. {result.unexpected_keys[0]}")
    return int(checkpoint["global_step"])
