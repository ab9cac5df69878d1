"""SDXL conditioning: prompt embeddings from both text encoders, and size/crop time ids."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import CLIPTokenizer


def encode_prompts(
    tokenizers: Sequence[CLIPTokenizer], text_encoders: Sequence[nn.Module], prompts: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text conditioning, as `StableDiffusionXLPipeline.encode_prompt` computes it.

    Returns the penultimate hidden states of both encoders concatenated on the feature axis
    (B, 77, 768 + 1280 for SDXL) and the second encoder's pooled, projected output (B, 1280).
    Gradients flow when the encoders carry trainable adapters.
    """
    hidden_states = []
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        input_ids = tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(encoder.device)
        output = encoder(input_ids, output_hidden_states=True)
        hidden_states.append(output.hidden_states[-2])
    pooled = output.text_embeds  # the last encoder is the one with a projection
    return torch.cat(hidden_states, dim=-1), pooled


def time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, target_size: torch.Tensor) -> torch.Tensor:
    """SDXL micro-conditioning, (B, 6): original (h, w), crop (top, left), target (h, w)."""
    return torch.cat([original_size, crop_top_left, target_size], dim=-1).float()
