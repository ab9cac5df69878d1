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


class RecordParameterPlacement(L.Callback):
    """Where the weights live while training runs (Lightning moves the model to the CPU after `fit`)."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.frozen = {(p.dtype, p.device.type) for p in module.unet.parameters() if not p.requires_grad}
        self.trained = {(p.dtype, p.device.type) for p in module.parameters() if p.requires_grad}


def test_bf16_mixed_training_keeps_frozen_weights_bf16_and_adapters_fp32(tiny_model_config, demo_data_dir) -> None:
    module = make_module(replace(tiny_model_config, dtype="bfloat16"))
    data = CaptionedImageDataModule(DataConfig(root=str(demo_data_dir), resolution=32, batch_size=2, num_workers=0))
    placement = RecordParameterPlacement()
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, callbacks=[placement])
    trainer.fit(module, datamodule=data)
    assert placement.frozen == {(torch.bfloat16, "cuda")}
    assert placement.trained == {(torch.float32, "cuda")}
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
