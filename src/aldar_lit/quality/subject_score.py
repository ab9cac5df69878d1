"""DreamBench-style subject scores of generated images, and `score`, the number that selects checkpoints.

One home for CLIP-T, CLIP-I, optional DINO and their weighted sum: training validation (`val/score`) and
evaluate.py both call `SubjectScorer`, so a checkpoint is selected by the number it is later evaluated with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from PIL import Image

from aldar_lit.config import ScorerConfig
from aldar_lit.quality.clip_scorer import ClipScorer, mean_reference_cosine
from aldar_lit.quality.dino_scorer import DinoScorer


def weighted_score(metrics: dict, weights: dict[str, float]):
    """`sum(weights[k] * metrics[k])`: with DreamBooth-level weights (conf/scorer/*.yaml) about 1.0 at its quality."""
    return sum(weight * metrics[name] for name, weight in weights.items())


class SubjectScorer:
    """CLIP-T, CLIP-I and optional DINO of generated images against fixed references, and their weighted `score`.

    The default weights (conf/scorer/*.yaml) are 1 / (2 * DreamBooth's published level) for each term, so a
    checkpoint at DreamBooth's quality scores about 1.0 and a relative loss in prompt fidelity (CLIP-T, ~0.31)
    costs as much as the same relative loss in subject fidelity (CLIP-I, ~0.81): CLIP-I alone rewards memorising
    the training images, CLIP-T alone rewards forgetting the character. Without references only CLIP-T exists.
    """

    def __init__(self, clip: ClipScorer, references: Sequence[Image.Image], weights: dict[str, float],
                 dino: DinoScorer | None = None):
        self.clip, self.dino, self.weights = clip, dino, dict(weights)
        self.clip_references = clip.embed_images(references) if references else None
        self.dino_references = dino.embed_images(references) if references and dino is not None else None

    def per_image(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """(N,) values per metric: `clip_t` always, `clip_i` (and `dino` where configured) with references."""
        if len(images) != len(prompts):
            raise ValueError(f"scoring needs one prompt per image, got {len(images)} images and {len(prompts)} prompts")
        clip_embeds = self.clip.embed_images(images)
        metrics = {"clip_t": (clip_embeds * self.clip.embed_texts(prompts)).sum(dim=-1)}
        if self.clip_references is not None:
            metrics["clip_i"] = mean_reference_cosine(clip_embeds, self.clip_references)
        if self.dino_references is not None:
            metrics["dino"] = mean_reference_cosine(self.dino.embed_images(images), self.dino_references)
        if self.weights and set(self.weights) <= set(metrics):  # linear: the mean of these is the score of the means
            metrics["score"] = weighted_score(metrics, self.weights)
        return metrics

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
        """Means over the images of every metric, `score`, their weighted sum (what `val/score` logs), and
        `score_se`, the standard error of that mean over the images (NaN for a single image): its noise."""
        if self.clip_references is None:
            raise ValueError("scoring for checkpoint selection needs at least one reference image (CLIP-I)")
        per_image = self.per_image(images, prompts)
        metrics = {name: float(values.mean()) for name, values in per_image.items() if name != "score"}
        metrics["score"] = weighted_score(metrics, self.weights)
        scores = weighted_score(per_image, self.weights)
        metrics["score_se"] = float(scores.std() / len(scores) ** 0.5) if len(scores) > 1 else float("nan")
        return metrics


def scorer_models(cfg: ScorerConfig, device: str | torch.device = "cpu") -> tuple[ClipScorer, Optional[DinoScorer]]:
    """The CLIP model and, when configured, the DINO model `cfg` describes."""
    clip = ClipScorer(cfg.clip.model_name, cfg.clip.pretrained, device=device, seed=cfg.seed)
    dino = None
    if cfg.dino is not None:
        dino = DinoScorer(cfg.dino.model_name, cfg.dino.pretrained, device=device, seed=cfg.seed,
                          image_size=cfg.dino.image_size)
    return clip, dino


def build_scorer(cfg: ScorerConfig, references: Sequence[Image.Image],
                 device: str | torch.device = "cpu") -> SubjectScorer:
    """The scorer `cfg` describes, with the references embedded once."""
    clip, dino = scorer_models(cfg, device)
    return SubjectScorer(clip, references, cfg.weights, dino)
