"""Training with validation under the precision settings the shipped configs use, on the tiny model.

`model=sdxl_base` keeps the frozen UNet and text encoders in bf16 and the VAE in fp32 under `bf16-mixed`
(conf/model/sdxl_base.yaml, conf/trainer/default.yaml); an fp16-fix VAE goes with fp16 weights and
`16-mixed`; `model=tiny` and `trainer=cpu` train in fp32. The VAE must run in its own dtype, outside the
training autocast, both when it encodes training images and when it decodes validation samples.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import lightning as L
import pytest
import torch

from aldar_lit.config import DataConfig, LoraConfig, ObjectiveConfig, OptimConfig
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.data.dataset import load_rgb
from aldar_lit.quality.subject_score import build_scorer
from aldar_lit.training.module import SDXLLoRAModule
from aldar_lit.training.validation import ValidationSampler
from test_validation import TINY_SCORER

PRECISIONS = [
    pytest.param("bfloat16", "float32", "bf16-mixed", id="sdxl_base:bf16-weights,fp32-vae,bf16-mixed"),
    # Lightning has no fp16 autocast on the CPU: it runs `16-mixed` as `bf16-mixed` there (with a warning), where
    # CLIP's fp16 layer norms refuse bf16 inputs. fp16 weights and an fp16 VAE train here without autocast; the
    # `16-mixed` combination needs a GPU.
    pytest.param("float16", "float16", "32-true", id="fp16-weights,fp16-vae"),
    pytest.param("float32", "float32", "32-true", id="tiny:fp32"),
]


@pytest.mark.parametrize(("dtype", "vae_dtype", "precision"), PRECISIONS)
def test_training_with_validation_runs_the_vae_in_its_own_dtype(tiny_model_config, demo_data_dir, tmp_path, dtype,
                                                                vae_dtype, precision) -> None:
    module = SDXLLoRAModule(replace(tiny_model_config, dtype=dtype, vae_dtype=vae_dtype),
                            LoraConfig(rank=2, alpha=2.0, init="default"), OptimConfig(), ObjectiveConfig(), seed=0)
    module.configure_model()
    calls = []  # (part, input dtype, output dtype, autocast on) for every pass through the real VAE

    def record(part: str):
        def hook(_, inputs, output) -> None:
            calls.append((part, inputs[0].dtype, output.dtype, torch.is_autocast_enabled("cpu")))
        return hook

    module.vae.encoder.register_forward_hook(record("encode"))
    module.vae.decoder.register_forward_hook(record("decode"))
    references = [load_rgb(path) for path in sorted(demo_data_dir.glob("*.png"))[:2]]
    sampler = ValidationSampler(["aldar_kose_man waving"], seeds=[0], every_n_steps=2,
                                scorer_factory=partial(build_scorer, TINY_SCORER, references), output_dir=tmp_path,
                                num_inference_steps=2, resolution=32)
    data = CaptionedImageDataModule(DataConfig(root=str(demo_data_dir), resolution=32, batch_size=2, num_workers=0))
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=2, logger=False, callbacks=[sampler],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)

    expected = getattr(torch, vae_dtype)
    assert {part for part, *_ in calls} == {"encode", "decode"}  # uncached latents, then the validation decode
    assert all(calls_in == calls_out == expected and not autocast for _, calls_in, calls_out, autocast in calls), calls
    assert len(sampler.history) == 1 and math.isfinite(sampler.history[0]["score"])
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert (tmp_path / "validation" / "step=000002" / "grid.png").is_file()
