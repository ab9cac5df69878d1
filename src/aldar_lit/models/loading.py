"""Load the SDXL parts through diffusers/transformers `from_pretrained`, whatever their source."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from aldar_lit.config import ModelConfig
from aldar_lit.offline.random_init import build_random_sdxl, materialise_random_sdxl


@dataclass
class SDXLComponents:
    """The SDXL parts a trainer or a pipeline needs, under diffusers' component names."""

    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: SchedulerMixin  # the inference scheduler shipped with the model

    def training_noise_scheduler(self) -> DDPMScheduler:
        """A DDPM scheduler with the model's noise schedule, as diffusers' training scripts use."""
        return DDPMScheduler.from_config(self.scheduler.config)


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def resolve_pretrained(cfg: ModelConfig) -> str:
    """The hub id or directory to load from, materialising a random model there first if needed."""
    if cfg.random_init is not None and cfg.materialise:
        return str(materialise_random_sdxl(cfg.random_init, cfg.seed, Path(os.path.expanduser(cfg.pretrained))))
    return cfg.pretrained


def load_sdxl(cfg: ModelConfig) -> SDXLComponents:
    """Every SDXL part, frozen weights in `cfg.dtype` (the VAE in `cfg.vae_dtype`)."""
    if cfg.random_init is not None and not cfg.materialise:
        components = SDXLComponents(**build_random_sdxl(cfg.random_init, cfg.seed))
        components.unet.to(torch_dtype(cfg.dtype))
        components.text_encoder.to(torch_dtype(cfg.dtype))
        components.text_encoder_2.to(torch_dtype(cfg.dtype))
        components.vae.to(torch_dtype(cfg.vae_dtype))
        return components

    source = resolve_pretrained(cfg)
    common = {"revision": cfg.revision, "variant": cfg.variant}
    dtype = torch_dtype(cfg.dtype)
    if cfg.vae is not None:
        vae = AutoencoderKL.from_pretrained(cfg.vae, torch_dtype=torch_dtype(cfg.vae_dtype))
    else:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch_dtype(cfg.vae_dtype), **common)
    return SDXLComponents(
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=cfg.revision),
        tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", revision=cfg.revision),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **common),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", dtype=dtype, **common
        ),
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **common),
        vae=vae,
        scheduler=EulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler", revision=cfg.revision),
    )
