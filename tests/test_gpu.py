"""Checks that need CUDA: `python -m pytest -m gpu` on a GPU machine (skipped elsewhere)."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import pytest
import torch

from aldar_lit.config import DataConfig
from aldar_lit.data.datamodule import CaptionedImageDataModule
from test_training_step import make_module

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_mixed_training_keeps_frozen_weights_bf16_and_adapters_fp32(tiny_model_config, demo_data_dir) -> None:
    module = make_module(replace(tiny_model_config, dtype="bfloat16"))
    data = CaptionedImageDataModule(DataConfig(root=str(demo_data_dir), resolution=32, batch_size=2, num_workers=0))
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=data)
    frozen = [p for p in module.unet.parameters() if not p.requires_grad]
    trained = [p for p in module.parameters() if p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 and p.is_cuda for p in frozen)
    assert trained and all(p.dtype == torch.float32 and p.is_cuda for p in trained)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
