"""Checkpoint selection by val/score: top-k retention, step checkpoints, and export of the best one."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from aldar_lit.artifacts import read_adapter_card
from aldar_lit.config import (
    ConfigError, DataConfig, DinoConfig, LoraConfig, ObjectiveConfig, OptimConfig, ScorerConfig, TrainConfig,
    ValidationConfig,
)
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.training.module import SDXLLoRAModule
from aldar_lit.training.run import Selection, export_selected, loggable_config
from aldar_lit.training.selection import CheckpointError, StepCheckpoint, best_score_checkpoint, load_checkpoint_weights
from aldar_lit.training.validation import ValidationSampler

SCRIPTED_SCORES = [0.1, 0.5, 0.3, 0.2, 0.4]  # one per evaluation at steps 1..5: best is step 2, then step 5
LORA = LoraConfig(rank=2, alpha=2.0, init="default")


class ScriptedScorer:
    """Stands in for CLIP: returns the next scripted score, whatever the images (selection is under test)."""

    def __init__(self, scores: list[float]):
        self.scores = iter(scores)

    def score(self, images, prompts) -> dict[str, float]:
        assert len(images) == len(prompts) == 1
        return {"clip_t": 0.0, "clip_i": 0.0, "score": next(self.scores)}


@pytest.fixture(scope="module")
def selected(tmp_path_factory, tiny_model_config, demo_data_dir):
    out_dir = tmp_path_factory.mktemp("selection_run")
    sampler = ValidationSampler(["aldar_kose_man waving"], seeds=[0], every_n_steps=1,
                                scorer_factory=lambda device: ScriptedScorer(SCRIPTED_SCORES), output_dir=out_dir,
                                num_inference_steps=1, resolution=32)
    selection = Selection(sampler, best_score_checkpoint(out_dir / "checkpoints", every_n_steps=1, top_k=2))
    module = SDXLLoRAModule(tiny_model_config, LORA, OptimConfig(unet_lr=1e-2, text_encoder_lr=1e-2),
                            ObjectiveConfig(), seed=0)
    data = CaptionedImageDataModule(DataConfig(root=str(demo_data_dir), resolution=32, batch_size=2, num_workers=0))
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[sampler, selection.best, StepCheckpoint([3], out_dir / "checkpoints")])
    trainer.fit(module, datamodule=data)
    final_state = {k: v.clone() for k, v in module.state_dict().items() if "lora_" in k}
    config = TrainConfig(lora=LORA, validation=ValidationConfig(enabled=True, every_n_steps=1),
                         data=DataConfig(root=str(demo_data_dir), validation_prompts=["x"]))
    files, report = export_selected(module, config, selection, out_dir)
    return out_dir, files, report, final_state, module


def test_top_k_keeps_the_best_scored_checkpoints(selected):
    out_dir, *_ = selected
    names = {p.name for p in (out_dir / "checkpoints").glob("*.ckpt")}
    assert names == {"best-step=2-score=0.5000.ckpt", "best-step=5-score=0.4000.ckpt", "step-000003.ckpt"}


def test_report_names_the_best_checkpoint_and_history(selected):
    out_dir, _, report, *_ = selected
    assert report["best_checkpoint"] == str(out_dir / "checkpoints" / "best-step=2-score=0.5000.ckpt")
    assert report["best_step"] == 2 and report["best_score"] == pytest.approx(0.5)
    assert [(h["step"], h["score"]) for h in report["history"]] == list(zip(range(1, 6), SCRIPTED_SCORES))


def test_exported_adapter_is_the_best_checkpoint_not_the_last_step(selected):
    out_dir, files, report, final_state, _ = selected
    best = torch.load(report["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    exported = list(load_file(files["diffusers"]).values())
    assert len(exported) == len(best)

    def in_export(tensor: torch.Tensor) -> bool:
        return any(t.shape == tensor.shape and torch.equal(t, tensor) for t in exported)

    assert all(in_export(tensor) for tensor in best.values())
    changed = [k for k, v in best.items() if not torch.equal(v, final_state[k])]
    assert changed, "training moved the adapter between step 2 and step 5"
    assert not any(in_export(final_state[k]) for k in changed)


def test_adapter_card_records_what_the_exported_weights_were_trained_for(selected, tiny_model_config):
    out_dir, *_ = selected
    card = read_adapter_card(out_dir / "lora")
    assert (card.training_steps, card.best_score) == (2, pytest.approx(0.5))  # the best checkpoint's, not step 5's
    assert (card.trigger, card.resolution, card.rank) == ("aldar_kose_man", 1024, 2)
    assert card.prediction_type == "epsilon"  # the tiny model's scheduler; objective.prediction_type=null
    assert card.base_model == tiny_model_config.pretrained


def test_a_planted_best_checkpoint_that_runs_code_is_refused_naming_it(selected, tmp_path):
    """A pickle with a `__reduce__` payload in place of a best-*.ckpt: refused, nothing runs."""
    from test_train_script import EVIL_MARKER, plant_evil_checkpoint

    module = selected[4]
    planted = plant_evil_checkpoint(tmp_path / "best-step=2-score=0.5000.ckpt")
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(planted))}: refused to load"):
        load_checkpoint_weights(module, planted)
    assert not (tmp_path / EVIL_MARKER).exists()


def test_best_checkpoint_of_another_lora_rank_is_named(selected, tmp_path):
    out_dir, _, report, _, module = selected
    checkpoint = torch.load(report["best_checkpoint"], map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["lora"]["rank"] = 8
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(tmp_path / 'other.ckpt'))} holds a LoRA of rank 8"):
        load_checkpoint_weights(module, tmp_path / "other.ckpt")


def test_without_validation_the_final_weights_are_exported(tiny_model_config, tmp_path):
    module = SDXLLoRAModule(tiny_model_config, LORA, OptimConfig(), ObjectiveConfig(), seed=0)
    module.configure_model()
    files, report = export_selected(module, TrainConfig(lora=LORA), None, tmp_path)
    assert report == {} and files["diffusers"].is_file()


def test_step_checkpoints_skip_steps_the_periodic_checkpoint_saves(tmp_path):
    assert StepCheckpoint([200, 400, 800, 1500], tmp_path, every_n=200).steps == {1500}
    assert StepCheckpoint([200, 400, 800, 1500], tmp_path).steps == {200, 400, 800, 1500}


def test_selection_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="data.validation_prompts"):
        TrainConfig(validation=ValidationConfig(enabled=True), data=DataConfig(root="x", validation_prompts=[]))
    with pytest.raises(ConfigError, match="optimized_metric"):
        TrainConfig(optimized_metric="val/score")
    with pytest.raises(ConfigError, match="scorer.weights.dino"):
        ScorerConfig(weights={"dino": 1.0})
    with pytest.raises(ConfigError, match="scorer.weights.lpips"):
        ScorerConfig(weights={"lpips": 1.0})
    with pytest.raises(ConfigError, match="validation.top_k"):
        ValidationConfig(top_k=0)
    ScorerConfig(dino=DinoConfig(pretrained=False), weights={"dino": 1.0})


def test_logged_config_withholds_secrets():
    cfg = OmegaConf.create({"logger": {"wandb": {"api_key": "sk-123", "project": "p"}},
                            "captioning": [{"openai_token": "t-1"}]})
    logged = loggable_config(cfg)
    assert logged["logger"]["wandb"] == {"api_key": "<redacted>", "project": "p"}
    assert logged["captioning"] == [{"openai_token": "<redacted>"}]
