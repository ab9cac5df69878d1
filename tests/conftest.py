"""Shared fixtures: the tiny SDXL model and the demo character, made once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("OPENAI_API_KEY", None)  # no test may reach the real API with a developer's key

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide cache, also exported as ALDAR_LIT_CACHE for scripts run as subprocesses."""
    path = tmp_path_factory.mktemp("aldar_cache")
    os.environ["ALDAR_LIT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir: Path) -> Path:
    """The tiny SDXL-architecture model as a diffusers folder, where `model=tiny` looks for it."""
    from aldar_lit.offline.random_init import materialise_random_sdxl

    return materialise_random_sdxl("tiny", 0, cache_dir / "models" / "tiny-sdxl-seed0")


@pytest.fixture(scope="session")
def demo_data_dir(cache_dir: Path) -> Path:
    """Eight demo-character images with captions, 64 px."""
    from aldar_lit.offline.demo_character import generate_demo_dataset

    return generate_demo_dataset(cache_dir / "data" / "demo-test", num_images=8, size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_model_config(tiny_model_dir: Path):
    from aldar_lit.config import ModelConfig

    return ModelConfig(name="tiny", pretrained=str(tiny_model_dir), random_init="tiny")


@pytest.fixture
def full_disk_dir(tmp_path: Path):
    """A directory on a real 1 MiB tmpfs, to fill up; skipped where mounting is not allowed (needs root)."""
    directory = tmp_path / "tmpfs"
    directory.mkdir()
    mount = shutil.which("mount")
    result = subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)],
                            capture_output=True, text=True) if mount else None
    if result is None or result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() if result else 'no mount command'})")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
