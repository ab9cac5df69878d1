"""Export trained LoRA adapters: diffusers format for `load_lora_weights`, kohya format for ComfyUI/A1111."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from safetensors.torch import save_file
from torch import nn

from aldar_lit.config import LoraConfig
from aldar_lit.models.lora import TE1, TE2, UNET, adapter_config, lora_state_dict

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "lora_kohya.safetensors"


def _canonical_text_encoder_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 drops `text_model.` from CLIPTextModel's module names; files keep the classic layout
    that every loader (older diffusers, kohya tools, ComfyUI) expects."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state_dict.items()}


def peft_state_dicts(trained: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """Each trained part's adapter in PEFT layout, text encoders with canonical key names."""
    return {
        part: lora_state_dict(model) if part == UNET else _canonical_text_encoder_keys(lora_state_dict(model))
        for part, model in trained.items()
    }


def kohya_state_dict(peft_dicts: dict[str, dict[str, torch.Tensor]], alpha: float) -> dict[str, torch.Tensor]:
    """kohya keys (`lora_unet_*`, `lora_te1_*`, `lora_te2_*`, `lora_down`/`lora_up`) with the configured alpha.

    diffusers' converter writes alpha = rank for every module, which rescales the adapter by
    alpha/rank whenever the two differ; the trained alpha is written instead.
    """
    prefixed = {f"{part}.{key}": value for part, sd in peft_dicts.items() for key, value in sd.items()}
    converted = convert_state_dict_to_kohya(prefixed)
    return {
        key: torch.tensor(float(alpha)) if key.endswith(".alpha") else value.contiguous()
        for key, value in converted.items()
    }


def export_lora(trained: dict[str, nn.Module], cfg: LoraConfig, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write both adapter files into `out_dir`, which appears complete or not at all."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    peft_dicts = peft_state_dicts(trained)
    to_diffusers = {part: convert_state_dict_to_diffusers(sd) for part, sd in peft_dicts.items()}
    metadata = {part: adapter_config(model).to_dict() for part, model in trained.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        StableDiffusionXLPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=to_diffusers[UNET],
            text_encoder_lora_layers=to_diffusers.get(TE1),
            text_encoder_2_lora_layers=to_diffusers.get(TE2),
            unet_lora_adapter_metadata=metadata[UNET],
            text_encoder_lora_adapter_metadata=metadata.get(TE1),
            text_encoder_2_lora_adapter_metadata=metadata.get(TE2),
            weight_name=DIFFUSERS_WEIGHTS,
        )
        save_file(
            kohya_state_dict(peft_dicts, cfg.alpha),
            tmp / KOHYA_WEIGHTS,
            metadata={
                "ss_network_module": "networks.lora",
                "ss_network_dim": str(cfg.rank),
                "ss_network_alpha": str(cfg.alpha),
                "ss_base_model_version": "sdxl_base_v1-0",
            },
        )
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"diffusers": out_dir / DIFFUSERS_WEIGHTS, "kohya": out_dir / KOHYA_WEIGHTS}


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing an older `dst` only once the new one is complete."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)
