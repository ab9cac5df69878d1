"""Consistent self-attention (StoryDiffusion, NeurIPS 2024): training-free identity sharing across frames.

The first `group_size` frames of a story (the anchor group) are denoised once together, as one batch, in
which every frame's self-attention (the UNet's `attn1` layers of the chosen blocks) also takes as keys and
values a random sample of the other anchor frames' tokens. Those samples are kept, per layer and step.
Every frame is then generated on its own, with its self-attention extended by the kept tokens of the
anchor frames other than itself: an anchor frame follows its trajectory of the batch, later frames (and a
QA retry of any frame, whatever its new seed) see exactly the same shared context. This is StoryDiffusion's
inference (identity frames in one batch, the rest reading their tokens), with the batch's samples kept
instead of redrawn, so that frames can be retried one at a time.

The processor wraps each layer's own processor and hands it `[own tokens, shared tokens]` as the
key/value input, so LoRA layers on `to_k`/`to_v` apply to the shared tokens too, the IP-Adapter's
cross-attention processors (`attn2`) are left alone, and with no shared tokens the computation is the
layer's own, bit for bit. The UNet's processors are restored after every pipeline call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from aldar_lit.config.infer import ConsistencyConfig

SELF_ATTENTION = ".attn1.processor"
BLOCK_PREFIXES = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}

SharedTokensFor = Callable[[str, int, torch.Tensor], Optional[torch.Tensor]]  # (layer, step, hidden) -> extra tokens


def shared_layers(processor_names: Sequence[str], blocks: Sequence[str]) -> list[str]:
    """The self-attention processors of the UNet blocks named in `blocks` (down / mid / up)."""
    prefixes = tuple(BLOCK_PREFIXES[block] for block in blocks)
    return [name for name in processor_names if name.endswith(SELF_ATTENTION) and name.startswith(prefixes)]


class SharedSelfAttnProcessor:
    """Runs a layer's own processor with its tokens plus the shared ones as keys and values."""

    def __init__(self, inner: Any, layer: str, step: Callable[[], int], shared_tokens: SharedTokensFor):
        self.inner = inner
        self.layer = layer
        self.step = step
        self.shared_tokens = shared_tokens

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        if encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3:
            shared = self.shared_tokens(self.layer, self.step(), hidden_states)
            if shared is not None:
                encoder_hidden_states = torch.cat([hidden_states, shared], dim=1)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


@contextlib.contextmanager
def installed(unet: torch.nn.Module, blocks: Sequence[str], shared_tokens: SharedTokensFor) -> Iterator[None]:
    """Wrap the chosen self-attention processors for the duration of one pipeline call, then restore them all.

    The step is the number of UNet calls so far in this call (one per denoising step, CFG halves included).
    """
    original = unet.attn_processors
    calls = [-1]

    def count_call(module: torch.nn.Module, args: Any) -> None:
        calls[0] += 1

    wrapped = dict(original)
    for name in shared_layers(list(original), blocks):
        wrapped[name] = SharedSelfAttnProcessor(original[name], name, lambda: calls[0], shared_tokens)
    hook = unet.register_forward_pre_hook(count_call)
    unet.set_attn_processor(wrapped)
    try:
        yield
    finally:
        hook.remove()
        unet.set_attn_processor(dict(original))


def sampling_seed(seeds: Sequence[int]) -> int:
    """One seed for the token sampling, from the anchor frames' seeds (numpy's way of combining seeds)."""
    return int(np.random.SeedSequence([int(s) % 2**63 for s in seeds]).generate_state(1, np.uint64)[0] >> 1)


def others(tokens: torch.Tensor, frame: Optional[int]) -> Optional[torch.Tensor]:
    """Kept tokens `(halves, anchors, k, dim)` of every anchor but `frame`, joined: `(halves, m, dim)`."""
    chosen = [tokens[:, j] for j in range(tokens.shape[1]) if j != frame]
    return torch.cat(chosen, dim=1) if chosen and tokens.shape[2] else None


class SharedTokens:
    """The anchor group's kept self-attention tokens for one storyboard, and the passes that write and read them."""

    def __init__(self, settings: ConsistencyConfig, seeds: Sequence[int], steps: int):
        self.settings = settings
        self.seeds = [int(s) for s in seeds]  # the anchor frames', in story order
        self.steps = steps
        self.bank: dict[tuple[str, int], torch.Tensor] = {}  # (layer, step) -> (halves, anchors, k, dim)

    @property
    def anchors(self) -> int:
        return len(self.seeds)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.bank.values())

    def shares_at(self, step: int) -> bool:
        start, end = self.settings.step_range
        return start <= step / self.steps < end

    @contextlib.contextmanager
    def recording(self, unet: torch.nn.Module) -> Iterator[None]:
        """For the anchor batch: each frame shares with the others of its CFG half; the samples are kept."""
        self.bank.clear()
        generator = torch.Generator().manual_seed(sampling_seed(self.seeds))

        def share(layer: str, step: int, hidden: torch.Tensor) -> Optional[torch.Tensor]:
            batch, tokens, dim = hidden.shape
            keep = round(self.settings.sample_rate * tokens)
            if not self.shares_at(step) or keep == 0:
                return None
            if batch % self.anchors:
                raise ValueError(f"shared attention: a batch of {batch} is not a whole number of CFG halves of "
                                 f"{self.anchors} anchor frames")
            halves = batch // self.anchors
            index = torch.stack([torch.randperm(tokens, generator=generator)[:keep] for _ in range(self.anchors)])
            frames = hidden.reshape(halves, self.anchors, tokens, dim)
            kept = frames.gather(2, index.to(hidden.device)[None, :, :, None].expand(halves, -1, -1, dim))
            self.bank[(layer, step)] = kept
            if self.anchors == 1:
                return None
            extra = torch.stack([others(kept, i) for i in range(self.anchors)], dim=1)
            return extra.reshape(batch, -1, dim)

        with installed(unet, self.settings.layers, share):
            yield

    @contextlib.contextmanager
    def reading(self, unet: torch.nn.Module, frame: int) -> Iterator[None]:
        """For one frame (0-based story position): its self-attention also sees the kept tokens of the other
        anchors (all of them for frames after the anchor group)."""

        def share(layer: str, step: int, hidden: torch.Tensor) -> Optional[torch.Tensor]:
            kept = self.bank.get((layer, step))
            if kept is None:
                return None
            if kept.shape[0] != hidden.shape[0]:  # CFG on in one pass, off in the other: the conditional half
                kept = kept[-1:].expand(hidden.shape[0], -1, -1, -1)
            return others(kept, frame)

        with installed(unet, self.settings.layers, share):
            yield

    def describe(self) -> dict[str, Any]:
        """Settings and what was kept, for the manifest."""
        s = self.settings
        return {"shared_attention": True, "sample_rate": s.sample_rate, "layers": list(s.layers),
                "step_range": list(s.step_range), "group_size": s.group_size,
                "anchor_frames": list(range(1, self.anchors + 1)), "anchor_seeds": self.seeds,
                "sampling_seed": sampling_seed(self.seeds), "kept_bytes": self.nbytes()}


@dataclass(frozen=True)
class SharedFrame:
    """One frame's view of a storyboard's shared tokens."""

    tokens: SharedTokens
    index: int  # 0-based position in the story

    def installed(self, unet: torch.nn.Module) -> contextlib.AbstractContextManager:
        return self.tokens.reading(unet, self.index)
