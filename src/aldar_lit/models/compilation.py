"""torch.compile of the SDXL parts, in place: parameter names, and so checkpoint keys, stay unchanged."""

from __future__ import annotations

import torch._dynamo
import torch._functorch.config
from torch import nn

from aldar_lit.config import ModelConfig


def repeated_blocks(unet: nn.Module) -> list[nn.Module]:
    """The transformer blocks that diffusers' regional compilation (`compile_repeated_blocks`) compiles."""
    return [m for m in unet.modules() if type(m).__name__ in unet._repeated_blocks]


def set_activation_memory_budget(budget: float) -> None:
    """The share of a compiled graph's activations the compiler may keep for the backward pass (1: all it likes).

    The budget is read when a graph is compiled, and a graph serves every module running the same code, so a new
    budget drops all graphs compiled so far in this process (a multirun's earlier jobs, the other variants of a
    benchmark)."""
    if torch._functorch.config.activation_memory_budget != budget:
        torch._functorch.config.activation_memory_budget = budget
        torch._dynamo.reset()


def compile_parts(cfg: ModelConfig, unet: nn.Module, text_encoders: tuple[nn.Module, ...]) -> None:
    """Compile what `cfg` asks for: the UNet (whole or block by block) and the text encoders."""
    if cfg.compile_unet is None and cfg.compile_text_encoders is None:
        return
    set_activation_memory_budget(cfg.activation_memory_budget or 1.0)
    if cfg.compile_unet is not None:
        if cfg.compile_unet_scope == "blocks":
            unet.compile_repeated_blocks(backend=cfg.compile_unet, mode=cfg.compile_mode)
        else:
            unet.compile(backend=cfg.compile_unet, mode=cfg.compile_mode)
    if cfg.compile_text_encoders is not None:
        for encoder in text_encoders:
            encoder.compile(backend=cfg.compile_text_encoders, mode=cfg.compile_mode)
