"""open_clip embeddings for DreamBench-style scores: CLIP-T (text-image) and CLIP-I (image-image) cosines.

Cosines are returned raw, in [-1, 1]: CLIP-T for good matches sits around 0.25-0.35 with ViT-L/14,
CLIP-I (generated vs. reference images of the subject) is the scale of the technical justification's "CLIP 0.79".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from PIL import Image

TINY_CLIP = "aldar-tiny-clip"
SPECS_DIR = Path(__file__).parent / "specs"


def register_packaged_clip_configs() -> None:
    """Make the architectures in `quality/specs/` (e.g. `aldar-tiny-clip`) known to open_clip; idempotent."""
    if TINY_CLIP not in open_clip.list_models():
        open_clip.add_model_config(SPECS_DIR)


def mean_reference_cosine(embeds: torch.Tensor, reference_embeds: torch.Tensor) -> torch.Tensor:
    """(N,) mean cosine of each L2-normalised row of `embeds` to every row of `reference_embeds`."""
    if len(reference_embeds) == 0:
        raise ValueError("image_image needs at least one reference image")
    return (embeds @ reference_embeds.T).mean(dim=1)


class ImageSimilarity:
    """Subject fidelity from any image embedder: `image_image` on top of `embed_images`."""

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def image_image(self, images: Sequence[Image.Image], references: Sequence[Image.Image]) -> torch.Tensor:
        """(N,) mean cosine of each image to all reference images (CLIP-I / DINO protocol of DreamBench)."""
        return mean_reference_cosine(self.embed_images(images), self.embed_images(references))


def _check_pairs(images: Sequence, texts: Sequence) -> None:
    if len(images) != len(texts):
        raise ValueError(f"text_image needs one text per image, got {len(images)} images and {len(texts)} texts")


class ClipScorer(ImageSimilarity):
    """open_clip image/text embedder for CLIP-T (text-image) and CLIP-I (image-image) cosines.

    `pretrained=None` builds the architecture with seeded random weights (offline); real runs use
    e.g. `ViT-L-14` / `openai`, which open_clip downloads once into its cache.
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        device: str | torch.device = "cpu",
        seed: int = 0,
        batch_size: int = 16,
    ):
        register_packaged_clip_configs()
        if model_name not in open_clip.list_models():
            raise ValueError(f"scorer.model_name: open_clip knows no architecture {model_name!r}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=self.device
            )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.embed_dim = int(open_clip.get_model_config(model_name)["embed_dim"])

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(img.convert("RGB")) for img in images[start:start + self.batch_size]])
            chunks.append(self.model.encode_image(pixels.to(self.device), normalize=True).float())
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim, device=self.device)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) L2-normalised text embeddings (texts longer than the context are truncated)."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size])).to(self.device)
            chunks.append(self.model.encode_text(tokens, normalize=True).float())
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim, device=self.device)

    def text_image(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """(N,) cosine of each (image_i, text_i) pair: CLIP-T, raw cosine (torchmetrics' CLIPScore / 100)."""
        _check_pairs(images, texts)
        return (self.embed_images(images) * self.embed_texts(texts)).sum(dim=-1)

