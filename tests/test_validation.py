"""ValidationSampler on the tiny SDXL model: real pipeline, real (tiny, random) CLIP/DINO scorers."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from aldar_lit.config import ClipConfig, DataConfig, DinoConfig, LoraConfig, ObjectiveConfig, OptimConfig, ScorerConfig
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.data.dataset import load_rgb
from aldar_lit.models.lora import UNET
from aldar_lit.quality.subject_score import build_scorer
from aldar_lit.training.module import SDXLLoRAModule
from aldar_lit.training.validation import ValidationSampler, assemble_pipeline

PROMPTS = ["aldar_kose_man standing in the steppe", "close-up portrait of aldar_kose_man"]
TINY_SCORER = ScorerConfig(clip=ClipConfig(model_name="aldar-tiny-clip", pretrained=None),
                           dino=DinoConfig(pretrained=False, image_size=32),
                           weights={"clip_i": 0.5, "clip_t": 2.0, "dino": 0.25})


def tiny_module(model_config) -> SDXLLoRAModule:
    return SDXLLoRAModule(model_config, LoraConfig(rank=2, alpha=2.0, init="default"), OptimConfig(),
                          ObjectiveConfig(), seed=0)


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def sampler(out_dir: Path, references: list[Image.Image], every_n_steps: int = 2) -> ValidationSampler:
    return ValidationSampler(PROMPTS, seeds=[0, 1], every_n_steps=every_n_steps,
                             scorer_factory=partial(build_scorer, TINY_SCORER, references),
                             output_dir=out_dir, num_inference_steps=2, guidance_scale=3.0, resolution=32)


@pytest.fixture(scope="module")
def references(demo_data_dir: Path) -> list[Image.Image]:
    return [load_rgb(path) for path in sorted(demo_data_dir.glob("*.png"))[:3]]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_model_config, demo_data_dir, references):
    """Four training steps with validation every two, a W&B offline logger attached."""
    out_dir = tmp_path_factory.mktemp("validation_run")
    callback = sampler(out_dir, references)
    module = tiny_module(tiny_model_config)
    data = CaptionedImageDataModule(DataConfig(root=str(demo_data_dir), resolution=32, batch_size=2, num_workers=0))
    logger = WandbLogger(project="aldar_lit_test", save_dir=str(out_dir), offline=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=logger, callbacks=[callback], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    logger.experiment.finish()
    return out_dir, callback, module, trainer


def test_scores_logged_at_the_cadence(fitted):
    _, callback, _, trainer = fitted
    assert [entry["step"] for entry in callback.history] == [2, 4]
    for entry in callback.history:
        assert set(entry) == {"step", "clip_t", "clip_i", "dino", "score", "score_se"}
        assert entry["score_se"] > 0  # the standard error of `score` over the step's images
        assert -1 <= entry["clip_t"] <= 1 and -1 <= entry["clip_i"] <= 1 and -1 <= entry["dino"] <= 1
        weighted = 0.5 * entry["clip_i"] + 2.0 * entry["clip_t"] + 0.25 * entry["dino"]
        assert entry["score"] == pytest.approx(weighted)
    assert float(trainer.callback_metrics["val/score"]) == pytest.approx(callback.history[-1]["score"])


def test_images_grid_and_manifest_saved_per_step(fitted):
    out_dir, callback, *_ = fitted
    for step in (2, 4):
        step_dir = out_dir / "validation" / f"step={step:06d}"
        names = {p.name for p in step_dir.iterdir()}
        assert names == {"grid.png", "manifest.json", *(f"p{p:02d}_seed{seed}.png" for p in (0, 1) for seed in (0, 1))}
        assert Image.open(step_dir / "p00_seed0.png").size == (32, 32)
        assert Image.open(step_dir / "grid.png").size == (2 * 32, 2 * 32)  # seeds across, prompts down
        manifest = json.loads((step_dir / "manifest.json").read_text())  # what evaluation's frames_of reads back
        assert [(f["file"], f["prompt"], f["seed"]) for f in manifest["frames"]] == [
            (f"p{p:02d}_seed{seed}.png", PROMPTS[p], seed) for p in (0, 1) for seed in (0, 1)]
        assert {**manifest["metrics"], "step": step} == next(e for e in callback.history if e["step"] == step)


def test_wandb_offline_run_holds_images_and_table(fitted):
    out_dir, *_ = fitted
    media = list((out_dir / "wandb").glob("offline-run-*/files/media"))
    assert media, "no W&B offline run with media"
    assert list(media[0].glob("images/val/samples_*.png"))
    assert list(media[0].glob("table/val/table_*.table.json"))


def test_generation_uses_the_live_adapter_and_restores_modes(fitted, references, tmp_path):
    _, _, module, trainer = fitted
    callback = sampler(tmp_path, references)
    callback.setup(trainer, module, "fit")
    modes = {name: m.training for name, m in module.named_modules()}
    assert any(modes.values()), "trained parts are in train mode during fit"
    grads_before = [p.grad for p in module.parameters()]
    first = callback.generate(trainer, module)
    again = callback.generate(trainer, module)
    assert all(same_pixels(a.image, b.image) for a, b in zip(first, again))
    assert {name: m.training for name, m in module.named_modules()} == modes
    assert [p.grad for p in module.parameters()] == grads_before
    with torch.no_grad():  # changing the in-memory LoRA must change the samples: no reload from disk
        for name, param in module.trained_modules()[UNET].named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    changed = callback.generate(trainer, module)
    assert not any(same_pixels(a.image, b.image) for a, b in zip(first, changed))


def test_validation_needs_prompts(tmp_path, references):
    with pytest.raises(ValueError, match="data.validation_prompts"):
        ValidationSampler([], [0], 1, partial(build_scorer, TINY_SCORER, references), tmp_path)


def test_validation_samples_with_the_trained_prediction_type(tiny_model_config):
    """objective.prediction_type reaches the scheduler the validation pipeline samples with, not only the loss."""
    module = SDXLLoRAModule(tiny_model_config, LoraConfig(rank=2, alpha=2.0), OptimConfig(),
                            ObjectiveConfig(prediction_type="v_prediction"), seed=0)
    module.configure_model()
    assert assemble_pipeline(module).scheduler.config.prediction_type == "v_prediction"
    default = tiny_module(tiny_model_config)
    default.configure_model()
    assert assemble_pipeline(default).scheduler.config.prediction_type == "epsilon"  # the model's own
