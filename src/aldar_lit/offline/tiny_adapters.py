"""Tiny, seeded IP-Adapter / image encoder / ControlNet weights written to disk in the real layouts.

Offline there are no h94/IP-Adapter or OpenPose-ControlNet weights, so the tiny model gets tiny
counterparts, materialised once (like the tiny SDXL) and then loaded by the very same diffusers
loaders as the real ones: `load_ip_adapter` (h94 file layout: `<repo>/sdxl_models/<weights>` plus a
CLIP vision encoder under `<repo>/models/image_encoder`) and `ControlNetModel.from_pretrained`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from aldar_lit.atomic_write import build_dir_once

IP_ADAPTER_SUBFOLDER = "sdxl_models"
IP_ADAPTER_WEIGHTS = "ip-adapter-plus-face_sdxl_vit-h.safetensors"
IMAGE_ENCODER_FOLDER = "models/image_encoder"

TINY_IMAGE_ENCODER = CLIPVisionConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=32, patch_size=8, projection_dim=32,
)
TINY_RESAMPLER_HIDDEN = 32
TINY_NUM_QUERIES = 4


def _resampler_to_h94_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' `IPAdapterPlusImageProjection` names -> the original IP-Adapter Plus `Resampler` names
    (the inverse of diffusers' `_convert_ip_adapter_image_proj_to_diffusers`)."""
    renames = {
        "ln0.": "0.norm1.", "ln1.": "0.norm2.", "attn.to_q.": "0.to_q.", "attn.to_out.0.": "0.to_out.",
        "ff.0.": "1.0.", "ff.1.net.0.proj.": "1.1.", "ff.1.net.2.": "1.3.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        layer, rest = key.split(".", 2)[1:]
        if rest.startswith("attn.to_k."):
            kv = torch.cat([value, state_dict[key.replace("to_k", "to_v")]])
            out[f"layers.{layer}.0.to_kv.weight"] = kv
        elif rest.startswith("attn.to_v."):
            continue
        else:
            old = next(o for o in renames if rest.startswith(o))
            out[f"layers.{layer}.{renames[old]}{rest[len(old):]}"] = value
    return out


def tiny_ip_adapter_state_dict(unet: UNet2DConditionModel, seed: int) -> dict[str, torch.Tensor]:
    """An IP-Adapter Plus state dict for `unet`, h94 key layout: `image_proj.*` (a Resampler over the
    image encoder's penultimate hidden states) and `ip_adapter.{i}.to_k_ip/to_v_ip.weight`, where `i`
    counts every attention processor of the UNet (self-attention slots included, so cross-attention
    ones are 1, 3, 5, ...)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        resampler = IPAdapterPlusImageProjection(
            embed_dims=TINY_IMAGE_ENCODER.hidden_size, output_dims=unet.config.cross_attention_dim,
            hidden_dims=TINY_RESAMPLER_HIDDEN, heads=1, num_queries=TINY_NUM_QUERIES,
        )
    state = {f"image_proj.{k}": v for k, v in _resampler_to_h94_keys(resampler.state_dict()).items()}
    cross = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
    for index, name in enumerate(cross):
        hidden = _hidden_size(unet, name)
        for proj in ("to_k_ip", "to_v_ip"):
            weight = torch.randn(hidden, unet.config.cross_attention_dim, generator=generator)
            state[f"ip_adapter.{2 * index + 1}.{proj}.weight"] = weight / math.sqrt(unet.config.cross_attention_dim)
    return {k: v.contiguous() for k, v in state.items()}


def _hidden_size(unet: UNet2DConditionModel, processor_name: str) -> int:
    channels = unet.config.block_out_channels
    if processor_name.startswith("mid_block"):
        return channels[-1]
    block = int(processor_name.split(".")[1])
    return list(reversed(channels))[block] if processor_name.startswith("up_blocks") else channels[block]


def materialise_tiny_ip_adapter(base_model_dir: str | os.PathLike, target: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny IP-Adapter repo laid out like h94/IP-Adapter, fitted to the UNet in `base_model_dir`."""

    def write(tmp: Path) -> None:
        unet = UNet2DConditionModel.from_pretrained(base_model_dir, subfolder="unet")
        (tmp / IP_ADAPTER_SUBFOLDER).mkdir()
        save_file(tiny_ip_adapter_state_dict(unet, seed), tmp / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHTS)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            CLIPVisionModelWithProjection(TINY_IMAGE_ENCODER).save_pretrained(tmp / IMAGE_ENCODER_FOLDER)

    return build_dir_once(target, write)


def materialise_tiny_controlnet(base_model_dir: str | os.PathLike, target: str | os.PathLike, seed: int = 0) -> Path:
    """A ControlNet made from the UNet in `base_model_dir` (`ControlNetModel.from_unet`), saved with
    `save_pretrained`. `from_unet` zero-initialises the output convolutions, which would make the
    ControlNet a no-op; they get seeded random weights so that a pose map really steers the frame."""

    def write(tmp: Path) -> None:
        unet = UNet2DConditionModel.from_pretrained(base_model_dir, subfolder="unet")
        vae_scale = 2 ** (len(_vae_block_channels(base_model_dir)) - 1)
        channels = (16, 32, 96, 256)[: int(math.log2(vae_scale)) + 1]  # one stride-2 conv per VAE halving
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
        generator = torch.Generator().manual_seed(seed)
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for conv in zero_convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
        controlnet.save_pretrained(tmp)

    return build_dir_once(target, write)


def _vae_block_channels(base_model_dir: str | os.PathLike) -> list[int]:
    from diffusers import AutoencoderKL

    return list(AutoencoderKL.load_config(base_model_dir, subfolder="vae")["block_out_channels"])
