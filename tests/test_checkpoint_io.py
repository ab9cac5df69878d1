"""Checkpoints reach their final name only when complete: a full disk, with the run directory on another
filesystem than $TMPDIR (a cluster's NFS/Lustre outputs), leaves the previous `last.ckpt` as it was."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aldar_lit.training.checkpoint_io import AtomicCheckpointIO
from aldar_lit.training.run import build_trainer
from test_config import compose_train

# A real Trainer's checkpoint IO saves a checkpoint larger than the space left for it.
SAVE_IN_CHILD = """
import sys
import lightning as L
import torch
from aldar_lit.training.checkpoint_io import AtomicCheckpointIO

trainer = L.Trainer(plugins=[AtomicCheckpointIO()], accelerator="cpu", devices=1, logger=False)
trainer.strategy.checkpoint_io.save_checkpoint({"global_step": 2, "lora": torch.ones(1 << 21)}, sys.argv[1])
"""
LIMIT_BYTES = 1 << 20


def limit_file_size() -> None:
    """Writes past 1 MiB fail with EFBIG (SIGXFSZ ignored, so the write returns the error instead of killing)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@pytest.fixture(params=["full_tmpfs", pytest.param("file_size_limit", marks=pytest.mark.slow)])  # same path, other fault
def small_disk(request, tmp_path: Path):
    """(checkpoint directory, preexec_fn, expected reason): a real 1 MiB tmpfs where mounting is allowed
    (root on Linux), and the kernel's per-process file size limit everywhere."""
    if request.param == "file_size_limit":
        return tmp_path / "outputs", limit_file_size, "File too large"
    return request.getfixturevalue("full_disk_dir"), None, "No space left on device"


def test_failed_save_keeps_the_previous_checkpoint_and_names_the_file(small_disk, tmp_path: Path) -> None:
    directory, preexec_fn, reason = small_disk
    last = directory / "checkpoints" / "last.ckpt"
    previous = {"global_step": 1, "lora": torch.arange(1000.0)}
    AtomicCheckpointIO().save_checkpoint(previous, last)
    local_tmp = tmp_path / "local_tmp"  # $TMPDIR on another filesystem than the checkpoints, as on clusters
    local_tmp.mkdir()
    result = subprocess.run([sys.executable, "-c", SAVE_IN_CHILD, str(last)], capture_output=True, text=True,
                            preexec_fn=preexec_fn, env={**os.environ, "TMPDIR": str(local_tmp)}, timeout=120)
    assert result.returncode != 0
    loaded = torch.load(last, weights_only=True)
    assert loaded["global_step"] == 1 and torch.equal(loaded["lora"], previous["lora"])
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind
    assert f"{reason} while writing {last}" in result.stderr


@pytest.mark.parametrize("trainer", ["cpu", "ddp"])
def test_training_saves_checkpoints_through_it(trainer: str, tmp_path: Path) -> None:
    config = compose_train("model=tiny", "data=demo", f"trainer={trainer}", "trainer.accelerator=cpu", "logger=csv",
                           "callbacks=none")
    assert isinstance(build_trainer(config, tmp_path, []).strategy.checkpoint_io, AtomicCheckpointIO)
