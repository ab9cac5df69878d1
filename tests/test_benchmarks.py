"""The training-step benchmark runs end to end on the tiny model and reports consistent figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow  # a benchmark's smoke run (~20-60 s); the code it times is tested on its own
def test_train_step_suite_reports_each_variant_with_model_flops(tmp_path) -> None:
    out = tmp_path / "steps.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "train_step_suite.py"), "--model", "tiny",
               "--device", "cpu", "--resolution", "32", "--rank", "2", "--warmup", "1", "--steps", "2",
               "--variants",
               "seed_recipe,cached_latents,gradient_checkpointing,text_encoders_frozen,double_batch,compiled_unet_blocks,"
               "compiled_unet_blocks_half_memory",
               "--profile", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path, timeout=300)
    result = json.loads(out.read_text())

    assert result["plain_s_per_step"] > 0 and result["lightning_s_per_step"] > 0
    variants = result["variants"]
    assert set(variants) == {"seed_recipe", "cached_latents", "gradient_checkpointing", "text_encoders_frozen",
                             "double_batch", "compiled_unet_blocks", "compiled_unet_blocks_half_memory"}
    assert all(row["s_per_step"] > 0 and row["mfu"] > 0 for row in variants.values())
    flops = {name: row["model_tflop_per_step"] for name, row in variants.items()}
    assert flops["cached_latents"] < flops["seed_recipe"]  # the VAE encoder leaves the step
    assert flops["text_encoders_frozen"] < flops["seed_recipe"]  # no text-encoder backward
    assert flops["gradient_checkpointing"] == flops["seed_recipe"]  # recomputation is not model work
    assert flops["double_batch"] == pytest.approx(2 * flops["seed_recipe"], rel=0.01)
    assert variants["double_batch"]["samples_per_s"] == pytest.approx(8 / variants["double_batch"]["s_per_step"])
    assert all(row["warmup_seconds"] > 0 for row in variants.values())
    ops = {name: row["eager_operators_per_step"] for name, row in variants.items()}
    assert 0 < ops["seed_recipe"]["forward_in_repeated_blocks"] < ops["seed_recipe"]["forward"]
    assert ops["text_encoders_frozen"]["backward"] < ops["seed_recipe"]["backward"]
    assert ops["compiled_unet_blocks"] == ops["seed_recipe"]  # compiling changes how the work is run, not the work
    saved = {name: row["saved_activation_bytes"] for name, row in variants.items()}
    assert saved["gradient_checkpointing"] < saved["seed_recipe"]
    assert saved["double_batch"] > 1.5 * saved["seed_recipe"]
    assert saved["compiled_unet_blocks_half_memory"] < 0.8 * saved["compiled_unet_blocks"]
    operators = result["seed_recipe_profile"]["operators"]
    assert operators and 0 < sum(row["share"] for row in operators) <= 1 + 1e-9
