"""What of a LoRA file a pipeline really holds after `load_lora_weights`.

diffusers only logs the keys of a LoRA it cannot place, and peft gives a LoRA layer whose weights are
missing from the file its initial values, so an adapter that partly fits the model loads without an
error. The loaded adapter is read back from each part and compared with the file, tensor by tensor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from peft.utils import get_peft_model_state_dict

LORA_PARTS = ("unet", "text_encoder", "text_encoder_2")  # the pipeline parts an SDXL LoRA file adapts
MANIFEST_KEYS = 50  # unmatched keys listed in the manifest


@dataclass(frozen=True)
class LoraFit:
    """A LoRA file's tensors (diffusers' key names) and those that no part of the pipeline holds."""

    tensors: int
    unmatched: tuple[str, ...]

    @property
    def applied(self) -> int:
        return self.tensors - len(self.unmatched)

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": self.tensors, "applied": self.applied, "unmatched": list(self.unmatched[:MANIFEST_KEYS])}


def _fingerprint(tensor: torch.Tensor) -> tuple[torch.dtype, tuple[int, ...], bytes]:
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return tensor.dtype, tuple(tensor.shape), hashlib.blake2b(raw, digest_size=16).digest()


def lora_fit(pipe: DiffusionPipeline, state_dict: dict[str, torch.Tensor], adapter_name: str) -> LoraFit:
    """Which tensors of `state_dict` (a LoRA file as diffusers' `lora_state_dict` reads it, keys prefixed by the
    part) the pipeline's adapter `adapter_name` holds, compared by value in the dtype the part keeps them in."""
    held: dict[str, set[tuple[torch.dtype, tuple[int, ...], bytes]]] = {}
    for part in LORA_PARTS:
        model = getattr(pipe, part)
        if adapter_name in (getattr(model, "peft_config", None) or {}):
            tensors = get_peft_model_state_dict(model, adapter_name=adapter_name).values()
            held[part] = {_fingerprint(tensor) for tensor in tensors}

    def is_held(key: str, tensor: torch.Tensor) -> bool:
        prints = held.get(key.split(".", 1)[0], set())
        return any(_fingerprint(tensor.to(dtype)) in prints for dtype in {dtype for dtype, _, _ in prints})

    return LoraFit(len(state_dict), tuple(key for key, tensor in state_dict.items() if not is_held(key, tensor)))
