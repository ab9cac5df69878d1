"""Attach PEFT LoRA adapters to the SDXL parts and read their weights back.

Adapters are injected with peft's own `inject_adapter_in_model` for all three parts: transformers
5's `PreTrainedModel.add_adapter` asks for a newer peft than exists, and one code path for the UNet
and both text encoders is simpler anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import peft
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from torch import nn

from aldar_lit.config import LoraConfig

ADAPTER = "default"
UNET, TE1, TE2 = "unet", "text_encoder", "text_encoder_2"
# peft inits that move their initial adapter out of the frozen weights (W_res = W - scale * B0 A0) at injection
BASE_REWRITING_INITS = ("pissa", "olora")
INITIAL_ADAPTER = "initial_lora_state_dict"  # attribute of a part holding its B0, A0 (on the CPU) for the export


def peft_lora_config(cfg: LoraConfig, part: str, model: nn.Module) -> peft.LoraConfig:
    return peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        init_lora_weights=True if cfg.init == "default" else cfg.init,
        target_modules=list(cfg.unet_targets if part == UNET else cfg.text_encoder_targets),
        exclude_modules=unread_layers(part, model),
    )


def unread_layers(part: str, model: nn.Module) -> str | None:
    """SDXL reads text encoder 1's penultimate hidden state, so its last layer never reaches the loss:
    adapters there would never train (and DDP would stop on their missing gradients)."""
    if part != TE1:
        return None
    return rf".*\.layers\.{model.config.num_hidden_layers - 1}\..*"


def adapter_config(model: nn.Module) -> peft.LoraConfig:
    """The LoRA config a part was injected with."""
    return model.peft_config[ADAPTER]


def attach_lora(models: dict[str, nn.Module], cfg: LoraConfig) -> dict[str, nn.Module]:
    """Freeze every part, inject LoRA into the trained ones; return those, keyed by part.

    The LoRA weights are kept in float32 whatever the frozen weights' dtype, so that the
    optimizer never steps half-precision parameters. With a base-rewriting init each part keeps its
    initial adapter, which the export needs to express the result against the original weights.
    """
    trained = {UNET: models[UNET]}
    if cfg.train_text_encoders:
        trained.update({TE1: models[TE1], TE2: models[TE2]})
    for model in models.values():
        model.requires_grad_(False)
    for part, model in trained.items():
        peft.inject_adapter_in_model(peft_lora_config(cfg, part, model), model, adapter_name=ADAPTER)
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.data = param.data.float()
                param.requires_grad_(True)
        if not any(p.requires_grad for p in model.parameters()):
            key = "lora.unet_targets" if part == UNET else "lora.text_encoder_targets"
            raise ValueError(f"{key}: no module of the {part} matched; its targets do not exist in this model")
        if cfg.init in BASE_REWRITING_INITS:
            setattr(model, INITIAL_ADAPTER, {k: v.cpu() for k, v in lora_state_dict(model).items()})
    return trained


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of one part in PEFT layout (`...lora_A.weight`), detached copies."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def adapted_layers(models: Iterable[nn.Module]) -> list[BaseTunerLayer]:
    """The layers peft wrapped with adapters, across `models`."""
    return [layer for model in models for layer in model.modules() if isinstance(layer, BaseTunerLayer)]


@contextlib.contextmanager
def uncast_adapter_inputs(layers: list[BaseTunerLayer]) -> Iterator[None]:
    """Let `layers` feed their input to the adapters as it is, instead of casting it to the adapters' dtype.

    Under autocast that cast is a round trip (bf16 -> fp32, then autocast's fp32 -> bf16) with the same
    result as none. peft's `disable_input_dtype_casting` does this too but walks every module of the model
    on each entry and exit, which costs more host time than a step can spare.
    """
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.cast_input_dtype_enabled = True
