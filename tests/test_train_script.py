"""train.py end to end, as a user runs it: the run directory contract, resume, clear config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT

TINY = ["experiment=quickstart", "callbacks=none", "logger=csv", "data.resolution=32", "lora.rank=2", "lora.alpha=4"]
SMALL_DEMO = ["data.demo.num_images=8", "data.demo.size=64"]


def train_command(run_dir: Path, *overrides: str, demo: bool = True, launcher: tuple[str, ...] = ()) -> list[str]:
    """`python [launcher] train.py ...` on the tiny recipe, e.g. launcher=("-m", "torch.distributed.run", ...)."""
    return [sys.executable, *launcher, "train.py", f"hydra.run.dir={run_dir}", *TINY, *(SMALL_DEMO if demo else []),
            *overrides]


def train(run_dir: Path, *overrides: str, check: bool = True, demo: bool = True,
          launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    result = subprocess.run(train_command(run_dir, *overrides, demo=demo, launcher=launcher),
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("full")
    train(run_dir, "trainer.max_steps=8", "checkpoint.every_n_train_steps=4")
    return run_dir


def test_run_directory_contract(full_run: Path, cache_dir: Path) -> None:
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["global_step"] == 8
    assert summary["base_model"] == str(cache_dir / "models" / "tiny-sdxl-seed0")
    assert summary["lora"] == {"rank": 2, "alpha": 4.0, "unet_targets": ["to_q", "to_k", "to_v", "to_out.0"],
                               "text_encoder_targets": ["q_proj", "k_proj", "v_proj", "out_proj"]}
    assert summary["train_seconds"] > 0 and summary["peak_memory_bytes"] > 0
    assert summary["checkpoint_bytes"] == (full_run / "checkpoints" / "last.ckpt").stat().st_size
    assert {p.name for p in (full_run / "checkpoints").iterdir()} == {"step-000004.ckpt", "step-000008.ckpt", "last.ckpt"}
    assert (full_run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (full_run / "lora" / "lora_kohya.safetensors").is_file()
    assert (full_run / "csv" / "metrics.csv").read_text().startswith("epoch,step,train/loss")


def test_checkpoint_holds_only_lora_and_training_state(full_run: Path) -> None:
    summary = json.loads((full_run / "summary.json").read_text())
    checkpoint = torch.load(full_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    assert sum(v.numel() for v in state.values()) == summary["trainable_params"]
    assert checkpoint["optimizer_states"] and checkpoint["global_step"] == 8


def test_resume_continues_the_step_count_and_reproduces_the_run(full_run: Path, tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    train(resumed, "trainer.max_steps=8", f"ckpt_path={full_run / 'checkpoints' / 'step-000004.ckpt'}")
    assert json.loads((resumed / "summary.json").read_text())["global_step"] == 8
    expected = load_file(full_run / "lora" / "pytorch_lora_weights.safetensors")
    actual = load_file(resumed / "lora" / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # inductor compiles C++ for the CPU: about a minute
def test_compiled_parts_train_like_eager_and_validate(full_run: Path, tmp_path: Path) -> None:
    """The UNet compiled block by block and both text encoders compiled train the same adapters as eager
    mode, and validation (no grad, eval mode: other compiled graphs) runs between the steps."""
    compiled = tmp_path / "compiled"
    train(compiled, "trainer.max_steps=8", "checkpoint.every_n_train_steps=4", "model.compile_unet=inductor",
          "model.compile_text_encoders=inductor", "callbacks=validation", "scorer=tiny", "validation.every_n_steps=4",
          "validation.num_inference_steps=2", "validation.seeds=[0]")
    assert json.loads((compiled / "summary.json").read_text())["best_step"] in (4, 8)
    assert len(list((compiled / "validation").rglob("*.png"))) >= 2
    eager = torch.load(full_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    state = torch.load(compiled / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state.keys() == eager.keys()
    for key in eager:
        torch.testing.assert_close(state[key], eager[key], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.rnak=8", "Key 'rnak' not in 'LoraConfig'"),
        ("optim.optimizer._target_=torch.optim.AdamX", "optim.optimizer._target_: cannot import 'torch.optim.AdamX'"),
    ],  # every other bad value is checked in-process in test_config.py
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path, override: str, message: str) -> None:
    result = train(tmp_path / "run", override, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_dir_is_named(tmp_path: Path) -> None:
    result = train(tmp_path / "run", "data=folder", f"data.root={tmp_path / 'nowhere'}", check=False, demo=False)
    assert result.returncode != 0
    assert f"data.root: directory {tmp_path / 'nowhere'} does not exist" in result.stderr
