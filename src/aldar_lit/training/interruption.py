"""Stopping on SIGTERM (SLURM, `timeout`, `docker stop`) or Ctrl-C with a checkpoint to resume from.

Lightning notes a SIGTERM and raises `SIGTERMException` at the end of the step in which it arrived, then
calls every callback's `on_exception`: `InterruptCheckpoint` saves `last.ckpt` there, so the checkpoint
holds a completed optimizer step. Ctrl-C is turned into the same request, since a `KeyboardInterrupt` can
land in the middle of an optimizer update; a second Ctrl-C stops at once (Lightning's KeyboardInterrupt
path, exit code 1, no checkpoint).

Not Lightning's `OnExceptionCheckpoint`: with one in the callbacks, every `fit` without `ckpt_path` resumes
from any `last.ckpt` found in the run directory (and warns on each fresh start); here resuming stays explicit.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aldar_lit.tool_command import tool_command

log = logging.getLogger(__name__)


class InterruptCheckpoint(Callback):
    """Saves `<dirpath>/last.ckpt` when training stops on SIGTERM or Ctrl-C; `signal_name` says which."""

    def __init__(self, dirpath: str | Path):
        self.ckpt_path = Path(dirpath) / "last.ckpt"
        self.signal_name: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning restores the previous SIGINT handler with its own signal handlers at the end of fit
        signal.signal(signal.SIGINT, self._stop_after_this_step)

    def _stop_after_this_step(self, signum: int, frame: FrameType | None) -> None:
        log.warning("Ctrl-C: stopping after this step with a checkpoint to resume from (Ctrl-C again: stop at "
                    "once, without one)")
        self.signal_name = "SIGINT"
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's SIGTERM path: every rank stops at the same step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.signal_name = self.signal_name or "SIGTERM"
            trainer.save_checkpoint(self.ckpt_path)

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 128 + its number."""
        return 128 + signal.Signals[self.signal_name or "SIGTERM"].value


class ResumeRecord(Callback):
    """Notes the checkpoint a fit resumed from (`ckpt_path`, or the `hpc_ckpt_N.ckpt` a SLURM requeue left in the
    run directory, which Lightning picks up itself) and its step, before training overwrites e.g. `last.ckpt`."""

    def __init__(self) -> None:
        self.resumed_from: dict[str, Any] | None = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.resumed_from = {"checkpoint": str(trainer.ckpt_path), "step": int(checkpoint["global_step"])}


def resume_command(checkpoint: str | Path, output_dir: str | Path) -> str:
    """The command line that resumes this run from `checkpoint` in its own directory."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]
    return shlex.join([*tool_command("train", sys.argv[0]), *kept, f"hydra.run.dir={Path(output_dir).resolve()}",
                       f"ckpt_path={Path(checkpoint).resolve()}"])


def interrupted_summary(callback: InterruptCheckpoint, output_dir: str | Path) -> dict[str, Any]:
    """The fields `summary.json` gains when a run stops on a signal."""
    return {"status": "interrupted", "interrupted_by": callback.signal_name,
            "resume_checkpoint": str(callback.ckpt_path), "resume_command": resume_command(callback.ckpt_path, output_dir)}
