"""Export trained LoRA adapters: diffusers format for `load_lora_weights`, kohya format for kohya's SDXL tools,
ComfyUI and A1111, and the adapter card, all in one directory that appears complete or not at all."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Optional

import peft
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from safetensors.torch import save_file
from torch import nn

from aldar_lit.artifacts import AdapterCard, write_adapter_card
from aldar_lit.atomic_write import replacing_dir
from aldar_lit.config import LoraConfig
from aldar_lit.models.lora import INITIAL_ADAPTER, TE1, TE2, UNET, adapter_config, lora_state_dict

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "lora_kohya.safetensors"


def _canonical_text_encoder_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 drops `text_model.` from CLIPTextModel's module names; files keep the classic layout
    that every loader (older diffusers, kohya tools, ComfyUI) expects."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state_dict.items()}


def plain_lora(model: nn.Module) -> tuple[dict[str, torch.Tensor], peft.LoraConfig]:
    """A part's adapter in PEFT layout, as a plain LoRA on the original base weights, and its config.

    PiSSA and OLoRA move their initial adapter out of the frozen weights (W_res = W - s B0 A0), so the
    trained part computes W + s (B A - B0 A0) = W + s [B, -B0] [A; A0]: a LoRA of twice the rank, with
    twice the alpha to keep s. This is peft's own conversion (`LoraModel.subtract_mutated_init`).
    """
    state, config = lora_state_dict(model), adapter_config(model)
    initial = getattr(model, INITIAL_ADAPTER, None)
    if initial is None:
        return state, config
    state = {key: torch.cat([value, initial[key].to(value)], dim=0) if ".lora_A." in key
             else torch.cat([value, -initial[key].to(value)], dim=1) for key, value in state.items()}
    return state, dataclasses.replace(config, r=2 * config.r, lora_alpha=2 * config.lora_alpha,
                                      init_lora_weights=True)


def exported_adapters(trained: dict[str, nn.Module]) -> dict[str, tuple[dict[str, torch.Tensor], peft.LoraConfig]]:
    """Each trained part's plain LoRA and config, text encoders with canonical key names."""
    adapters = {part: plain_lora(model) for part, model in trained.items()}
    return {part: (sd if part == UNET else _canonical_text_encoder_keys(sd), config)
            for part, (sd, config) in adapters.items()}


# Outside the down/mid/up blocks, and inside a ResNet block, the two UNets name modules differently.
_LDM_TOP_LEVEL = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
                  "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                  "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_BLOCK_MODULE = re.compile(r"(down_blocks|mid_block|up_blocks)\.(?:(\d+)\.)?"
                           r"(resnets|attentions|downsamplers|upsamplers)\.(\d+)(\..+)?")


def ldm_unet_module(name: str, unet_config: Any) -> str:
    """A diffusers UNet module path in the SDXL (sgm/LDM) UNet's naming, which kohya's SDXL LoRAs use.

    In SDXL `down_blocks.1.attentions.0.X` is `input_blocks.4.1.X`. Every level of the LDM UNet holds its
    layers plus one down/upsampler slot, so the indices follow from `layers_per_block` and from which up
    blocks have attention: any UNet of the SDXL family maps, whatever its size.
    """
    for ours, ldm in _LDM_TOP_LEVEL.items():
        if name == ours or name.startswith(f"{ours}."):
            return ldm + name[len(ours):]
    match = _BLOCK_MODULE.fullmatch(name)
    if match is None:
        raise ValueError(f"{name}: this UNet module has no SDXL (LDM) name for the kohya export")
    group, block, kind, layer, rest = match.groups()
    rest, layer, per_level = rest or "", int(layer), unet_config.layers_per_block + 1
    if kind == "resnets":
        inner, _, tail = rest[1:].partition(".")
        rest = f".{_LDM_RESNET.get(inner, inner)}" + (f".{tail}" if tail else "")
    if group == "mid_block":  # resnet, attention, resnet
        return f"middle_block.{2 * layer + (kind == 'attentions')}{rest}"
    level = int(block)
    if kind == "downsamplers":
        return f"input_blocks.{(level + 1) * per_level}.0{rest.replace('.conv', '.op', 1)}"
    if kind == "upsamplers":
        has_attention = "CrossAttn" in unet_config.up_block_types[level]
        return f"output_blocks.{level * per_level + per_level - 1}.{1 + has_attention}{rest}"
    index = 1 + level * per_level + layer if group == "down_blocks" else level * per_level + layer
    return f"{'input' if group == 'down_blocks' else 'output'}_blocks.{index}.{int(kind == 'attentions')}{rest}"


def kohya_state_dict(peft_dicts: dict[str, dict[str, torch.Tensor]], alpha: float,
                     unet_config: Any) -> dict[str, torch.Tensor]:
    """kohya keys (`lora_unet_*` in the LDM UNet's naming, `lora_te1_*`, `lora_te2_*`, `lora_down`/`lora_up`)
    with the configured alpha.

    diffusers' converter writes alpha = rank for every module, which rescales the adapter by
    alpha/rank whenever the two differ; the trained alpha is written instead.
    """
    def renamed(part: str, key: str) -> str:
        if part != UNET:
            return key
        module, lora_weight = key.split(".lora_", 1)
        return f"{ldm_unet_module(module, unet_config)}.lora_{lora_weight}"

    prefixed = {f"{part}.{renamed(part, key)}": value for part, sd in peft_dicts.items() for key, value in sd.items()}
    converted = convert_state_dict_to_kohya(prefixed)
    return {
        key: torch.tensor(float(alpha)) if key.endswith(".alpha") else value.contiguous()
        for key, value in converted.items()
    }


def export_lora(trained: dict[str, nn.Module], cfg: LoraConfig, out_dir: str | os.PathLike, *,
                base_model: Optional[str] = None, trigger: Optional[str] = None,
                prediction_type: Optional[str] = None, resolution: Optional[int] = None,
                training_steps: Optional[int] = None, best_score: Optional[float] = None) -> dict[str, Path]:
    """Write both adapter files and the adapter card (the keyword arguments) into `out_dir`, which appears
    complete or not at all; return the adapter files by format."""
    out_dir = Path(out_dir)
    adapters = exported_adapters(trained)
    peft_dicts = {part: sd for part, (sd, _) in adapters.items()}
    to_diffusers = {part: convert_state_dict_to_diffusers(sd) for part, sd in peft_dicts.items()}
    metadata = {part: config.to_dict() for part, (_, config) in adapters.items()}
    rank, alpha = adapters[UNET][1].r, adapters[UNET][1].lora_alpha  # 2x the configured ones after PiSSA/OLoRA
    files = {"diffusers": DIFFUSERS_WEIGHTS, "kohya": KOHYA_WEIGHTS}
    card = AdapterCard(
        rank=rank, alpha=alpha, init=cfg.init, unet_targets=list(cfg.unet_targets),
        text_encoder_targets=list(cfg.text_encoder_targets) if TE1 in trained else [], files=files,
        base_model=base_model, trigger=trigger, prediction_type=prediction_type, resolution=resolution,
        training_steps=training_steps, best_score=best_score,
    )
    with replacing_dir(out_dir) as tmp:
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
            kohya_state_dict(peft_dicts, alpha, trained[UNET].config),
            tmp / KOHYA_WEIGHTS,
            metadata={
                "ss_network_module": "networks.lora",
                "ss_network_dim": str(rank),
                "ss_network_alpha": str(alpha),
                "ss_base_model_version": "sdxl_base_v1-0",
            },
        )
        write_adapter_card(tmp, card)
    return {format_: out_dir / name for format_, name in files.items()}
