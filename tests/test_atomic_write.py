"""Atomic writes: a killed writer leaves the old file, and its temporary is removed by the next write of that
file; temporaries of other files or of live writers are left alone."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aldar_lit.atomic_write import WriteError, replacing_dir, write_bytes, write_json
from aldar_lit.data.caches import TensorCache

KILLED_WRITER = """
import sys, time
from aldar_lit.atomic_write import open_for_replace

with open_for_replace(sys.argv[1]) as handle:
    handle.write(b"the first half of a new checkpoint")
    handle.flush()
    print("writing", flush=True)
    time.sleep(120)
"""
NEXT_RUN = "import sys; from aldar_lit.atomic_write import write_bytes; write_bytes(sys.argv[1], b'next run')"


def test_kill_during_a_write_keeps_the_old_file_and_the_next_run_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    write_bytes(target, b"previous good checkpoint")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == b"writing\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"previous good checkpoint"
    (leftover,) = (p for p in tmp_path.iterdir() if p != target)
    assert leftover.name.startswith(".last.ckpt.tmp-")

    subprocess.run([sys.executable, "-c", NEXT_RUN, str(target)], check=True, timeout=120)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert target.read_bytes() == b"next run"


def test_only_old_temporaries_of_the_same_target_are_removed(tmp_path: Path) -> None:
    def temporary(name: str, old: bool, directory: bool = False) -> Path:
        path = tmp_path / name
        if directory:
            path.mkdir()
            (path / "pytorch_lora_weights.safetensors").write_bytes(b"half")
        else:
            path.write_bytes(b"half")
        if old:
            os.utime(path, (0, 0))  # older than this process: a killed run's
        return path

    killed_file = temporary(".summary.json.tmp-0123456789ab", old=True)
    killed_export = temporary(".lora.tmp-0123456789ab", old=True, directory=True)
    kept = [
        temporary(".summary.json.tmp-ba9876543210", old=False),  # a writer still at work
        temporary(".summary.json.bak.tmp-0123456789ab", old=True),  # another file's
        temporary(".summary.json.tmp-handwritten", old=True),  # not a name the writer makes
    ]
    write_json(tmp_path / "summary.json", {"status": "done"})
    with replacing_dir(tmp_path / "lora") as new:
        (new / "adapter_card.json").write_text("{}")
    assert not killed_file.exists() and not killed_export.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["summary.json", "lora", *(p.name for p in kept)])


def test_a_failed_directory_build_leaves_the_old_directory_and_no_temporary(tmp_path: Path) -> None:
    with replacing_dir(tmp_path / "lora") as new:
        (new / "old.safetensors").write_bytes(b"old")
    with pytest.raises(WriteError, match=f"No space left on device while writing {tmp_path / 'lora'}") as failure:
        with replacing_dir(tmp_path / "lora") as new:
            (new / "new.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert failure.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == ["lora"]
    assert [p.name for p in (tmp_path / "lora").iterdir()] == ["old.safetensors"]


def test_full_disk_during_a_cache_fill_names_the_entry_and_leaves_no_partial_file(full_disk_dir: Path) -> None:
    cache = TensorCache(full_disk_dir / "latents")
    key = "ab" + "0" * 62
    with pytest.raises(WriteError, match=f"No space left on device while writing {cache.path(key)}"):
        cache.put(key, {"latent_dist": torch.zeros(1 << 19)})  # 2 MiB on a 1 MiB disk
    assert list(cache.path(key).parent.iterdir()) == []
    assert cache.get(key) is None
