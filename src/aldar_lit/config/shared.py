"""Sub-configs defined once and composed by several tools (train, infer, evaluate, caption, curate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from aldar_lit.config.core import require

TRIGGER = "aldar_kose_man"  # the character's trigger token: data.trigger, story.trigger, suite.trigger, caption trigger


class ImageDetail(StrEnum):
    """The vision API's `detail` setting (captioning and the VLM judge)."""

    low = "low"  # 85 input tokens per image
    high = "high"  # tiles of 512 px (see OpenAI's vision docs)
    auto = "auto"


@dataclass
class PathsConfig:
    cache_dir: str = "~/.cache/aldar_lit"
    output_dir: str = "."


SCORE_TERMS = ("clip_t", "clip_i", "dino")


@dataclass
class DinoConfig:
    """DINO ViT subject fidelity (timm); `pretrained: false` gives seeded random weights (offline)."""

    model_name: str = "vit_small_patch16_224.dino"
    pretrained: bool = True
    image_size: Optional[int] = None  # None: the model's own input size


@dataclass
class ClipConfig:
    """An open_clip model: the subject scorer's (`scorer.clip`) and storyboard QA's (`qa.clip`)."""

    model_name: str = "ViT-L-14"
    pretrained: Optional[str] = "openai"  # None: random weights seeded by the tool's seed (offline aldar-tiny-clip)


@dataclass
class ScorerConfig:
    """open_clip model for CLIP-T/CLIP-I, optional DINO, and the weights of `val/score`."""

    clip: ClipConfig = field(default_factory=ClipConfig)
    dino: Optional[DinoConfig] = None  # e.g. scorer.dino={model_name: vit_small_patch16_224.dino, pretrained: true}
    # val/score = sum(weights[k] * val/k); each weight is 1 / (2 x DreamBooth's published level) -- CLIP-I 0.812, CLIP-T
    # 0.306 (Ruiz et al. 2023, Table 1) -- so a DreamBooth-quality checkpoint scores ~1.0 and a relative loss of prompt
    # fidelity costs as much as the same relative loss of subject fidelity. CLIP-I alone would reward memorising the
    # training images; CLIP-T alone, forgetting the character.
    weights: dict[str, float] = field(default_factory=lambda: {"clip_i": 0.616, "clip_t": 1.634})
    seed: int = 0  # of the random-weight models (clip.pretrained=null, dino.pretrained=false)

    def __post_init__(self) -> None:
        for name in self.weights:
            require(name in SCORE_TERMS, f"scorer.weights.{name}", f"must be one of {SCORE_TERMS}")
        require(any(w != 0 for w in self.weights.values()), "scorer.weights", "must weigh at least one term")
        require("dino" not in self.weights or self.dino is not None, "scorer.weights.dino",
                 "needs scorer.dino to be configured")


@dataclass
class WandbConfig:
    """evaluate.py's `wandb.*`: the keys (and defaults) of Lightning's WandbLogger, which train.py's `logger.wandb.*`
    passes on (conf/logger/default.yaml), so a W&B setting is written the same way for both tools."""

    enabled: bool = False
    project: str = "aldar_lit"
    offline: bool = True  # sync later with `wandb sync`; false streams to wandb.ai
