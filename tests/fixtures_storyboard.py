"""Fixtures for the storyboard tests: a LoRA exported from the tiny model, small story files, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_GENERATION = ["generation.width=64", "generation.height=64", "generation.steps=2", "progress=false"]


def export_random_lora(model_dir: Path, out_dir: Path, seed: int = 0, rank: int = 4) -> Path:
    """A LoRA made by the training core's own attach/export code on the tiny model, lora_B random (non-zero); the
    same for a given seed, whatever ran before (peft initialises lora_A from the global RNG)."""
    from aldar_lit.config import LoraConfig, ModelConfig
    from aldar_lit.models.export import export_lora
    from aldar_lit.models.loading import load_sdxl
    from aldar_lit.models.lora import attach_lora

    components = load_sdxl(ModelConfig(name="tiny", pretrained=str(model_dir), random_init="tiny"))
    cfg = LoraConfig(rank=rank, alpha=float(rank))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trained = attach_lora({"unet": components.unet, "text_encoder": components.text_encoder,
                               "text_encoder_2": components.text_encoder_2}, cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in trained.values():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    export_lora(trained, cfg, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_random_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "lora")


def write_story(path: Path, scenes: list) -> Path:
    path.write_text(yaml.safe_dump({"scenes": scenes}))
    return path


def compose_infer(overrides: list[str]):
    """conf/infer.yaml composed with `overrides`, as infer.py would see it (output_dir set explicitly)."""
    from hydra import compose, initialize_config_dir

    from aldar_lit.config.infer import register_infer_configs

    register_infer_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="infer", overrides=overrides)
