"""SDXL-architecture models with seeded random weights, built from config JSONs packaged with aldar_lit.

`specs/sdxl/` holds the configs of stabilityai/stable-diffusion-xl-base-1.0 (full size, for benchmarks
that cannot download weights); `specs/tiny/` a few-million-parameter model of the same classes, for
tests and demos. A random model is materialised once as a diffusers-format directory, so it is then
loaded by exactly the same `from_pretrained` code as the real SDXL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from aldar_lit.atomic_write import build_dir_once
from aldar_lit.config import ConfigError
from aldar_lit.offline.tokenizer import EOS, build_clip_tokenizer

SPEC_ROOT = Path(__file__).parent / "specs"


def spec_dir(name: str) -> Path:
    path = SPEC_ROOT / name
    if not path.is_dir():
        known = sorted(p.name for p in SPEC_ROOT.iterdir() if p.is_dir())
        raise ConfigError(f"model.random_init: unknown spec {name!r}; known specs: {known}")
    return path


def _load_spec(name: str) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in spec_dir(name).glob("*.json")}


def build_random_sdxl(name: str, seed: int) -> dict[str, Any]:
    """All seven SDXL pipeline components, keyed as `StableDiffusionXLPipeline` expects them."""
    spec = _load_spec(name)
    with torch.random.fork_rng(devices=[]):  # seeded weights, without touching the caller's RNG
        torch.manual_seed(seed)
        return {
            "unet": UNet2DConditionModel.from_config(spec["unet"]),
            "vae": AutoencoderKL.from_config(spec["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**_without_class(spec["text_encoder"]))),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**_without_class(spec["text_encoder_2"]))),
            "tokenizer": build_clip_tokenizer(pad_token=EOS),
            "tokenizer_2": build_clip_tokenizer(pad_token="!"),
            "scheduler": EulerDiscreteScheduler.from_config(spec["scheduler"]),
        }


def _without_class(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "_class_name"}


def materialise_random_sdxl(name: str, seed: int, target: str | os.PathLike) -> Path:
    """Write the random model `name` as a diffusers-format directory at `target`, once (see `build_dir_once`)."""
    return build_dir_once(target, lambda tmp: StableDiffusionXLPipeline(**build_random_sdxl(name, seed)).save_pretrained(tmp))
