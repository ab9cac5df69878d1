"""Exact resume from a checkpoint taken part-way through an epoch, with random crops and flips."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch  # what Lightning's fit loop calls every epoch
from PIL import Image
from safetensors.torch import load_file

from aldar_lit.config import DataConfig
from aldar_lit.data.datamodule import CaptionedImageDataModule
from conftest import REPO_ROOT
from test_train_script import train, train_command

# 8 images in batches of 3: 3 batches per epoch, so checkpoints every 4 steps fall inside epochs 1 and 2
RANDOM_VIEWS = ("data=folder", "data.crop=random", "data.random_flip=true", "data.cache_latents=false",
                "data.batch_size=3", "data.min_image_side=32", "checkpoint.every_n_train_steps=4")
STEPS = 9  # 3 epochs


@pytest.fixture(scope="module")
def off_square_images(tmp_path_factory, demo_data_dir: Path) -> Path:
    """The demo images cut to 3:4 and 4:3, so a random crop of the square bucket has room to move."""
    root = tmp_path_factory.mktemp("off_square")
    for i, image_path in enumerate(sorted(demo_data_dir.glob("*.png"))):
        with Image.open(image_path) as image:
            box = (0, 0, 48, 64) if i % 2 else (0, 0, 64, 48)
            image.crop(box).save(root / image_path.name)
        shutil.copy(image_path.with_suffix(".txt"), root)
    return root


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, off_square_images: Path, tiny_model_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train(run_dir, *RANDOM_VIEWS, f"data.root={off_square_images}", f"trainer.max_steps={STEPS}", demo=False)
    return run_dir


def assert_same_adapter(run: Path, reference: Path) -> None:
    expected = load_file(reference / "lora" / "pytorch_lora_weights.safetensors")
    actual = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [
    (f"trainer.max_steps={STEPS}",),
    # Lightning builds the loader before it loads the checkpoint here: the data module's own state resumes it
    pytest.param(("trainer.max_steps=-1", "+trainer.max_epochs=3"), marks=pytest.mark.slow),
], ids=["max_steps", "max_epochs"])
def test_resume_from_a_mid_epoch_checkpoint_reproduces_the_run(uninterrupted: Path, off_square_images: Path,
                                                               tmp_path: Path, length: tuple[str, ...]) -> None:
    checkpoint = uninterrupted / "checkpoints" / "step-000004.ckpt"
    assert torch.load(checkpoint, weights_only=True)["CaptionedImageDataModule"] == {"epoch": 1, "batches": 1}
    train(tmp_path, *RANDOM_VIEWS, f"data.root={off_square_images}", *length, f"ckpt_path={checkpoint}", demo=False)
    assert_same_adapter(tmp_path, uninterrupted)


@pytest.mark.slow  # three runs of train.py
def test_sigkill_after_a_mid_epoch_checkpoint_then_resume_reproduces_the_run(uninterrupted: Path,
                                                                           off_square_images: Path,
                                                                           tmp_path: Path) -> None:
    """The killed run is given more steps, so that it is surely still training when killed (the constant LR
    schedule does not depend on them); it resumes in its own directory with the uninterrupted run's steps."""
    overrides = (*RANDOM_VIEWS, f"data.root={off_square_images}")
    checkpoint = tmp_path / "checkpoints" / "step-000004.ckpt"
    process = subprocess.Popen(train_command(tmp_path, *overrides, "trainer.max_steps=1000", demo=False),
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists() and process.poll() is None, "train.py ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "lora").exists()
    train(tmp_path, *overrides, f"trainer.max_steps={STEPS}", f"ckpt_path={checkpoint}", demo=False)
    assert_same_adapter(tmp_path, uninterrupted)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_restored_loader_continues_with_the_same_batches_crops_and_flips(off_square_images: Path,
                                                                          num_workers: int) -> None:
    """In-process: the loader's state after some batches of epoch 1, given to a fresh data module, yields
    the rest of that epoch exactly, though workers had loaded batches ahead."""
    def data_module() -> CaptionedImageDataModule:
        cfg = DataConfig(root=str(off_square_images), resolution=32, crop="random", random_flip=True, batch_size=3,
                         min_image_side=32, num_workers=num_workers)
        data = CaptionedImageDataModule(cfg, seed=11)
        data.setup()
        return data

    first = data_module()
    loader = first.train_dataloader()
    _set_sampler_epoch(loader, 1)
    batches = iter(loader)
    seen = [next(batches)]
    state = first.state_dict()
    rest = list(batches)
    assert state == {"epoch": 1, "batches": 1} and len(rest) == 2

    resumed = data_module()
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    _set_sampler_epoch(loader, 1)
    again = list(loader)
    assert len(again) == len(rest)
    for expected, actual in zip(rest, again, strict=True):
        assert torch.equal(actual["index"], expected["index"])
        assert torch.equal(actual["crop_top_left"], expected["crop_top_left"])
        assert torch.equal(actual["pixel_values"], expected["pixel_values"])
    assert resumed.state_dict() == {"epoch": 1, "batches": 3}
    crops = {tuple(c) for batch in seen + rest for c in batch["crop_top_left"].tolist()}
    assert len(crops) > 2  # the crops really are random
