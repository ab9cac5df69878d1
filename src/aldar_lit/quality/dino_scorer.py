"""DINO ViT-S/16 image embeddings for DreamBench's DINO subject-fidelity score.

DINO features separate instances of one class better than CLIP's (DreamBench, Ruiz et al. 2023),
so two different men in robes score lower under DINO than under CLIP-I.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from PIL import Image

from aldar_lit.quality.clip_scorer import ImageSimilarity


class DinoScorer(ImageSimilarity):
    """timm DINO ViT (CLS token) embedder; `image_image` gives the mean cosine to the reference images.

    `pretrained=False` builds the architecture with seeded random weights (offline, tests);
    real runs use `pretrained=True`, which timm downloads once from the Hugging Face hub.
    `image_size` overrides the ViT's input size (tests use a small one to stay fast).
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224.dino",
        pretrained: bool = True,
        device: str | torch.device = "cpu",
        seed: int = 0,
        image_size: int | None = None,
        batch_size: int = 16,
    ):
        self.device = torch.device(device)
        self.batch_size = batch_size
        size_kwargs = {"img_size": image_size} if image_size is not None else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **size_kwargs)
            except RuntimeError as err:  # timm raises RuntimeError for unknown names
                raise ValueError(f"scorer.dino.model_name: timm cannot build {model_name!r} ({err})") from err
        self.model = model.to(self.device).eval().requires_grad_(False)
        data_config = timm.data.resolve_model_data_config(model)
        if image_size is not None:
            data_config["input_size"] = (3, image_size, image_size)
        self.preprocess = timm.data.create_transform(**data_config, is_training=False)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) L2-normalised CLS embeddings."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(img.convert("RGB")) for img in images[start:start + self.batch_size]])
            chunks.append(torch.nn.functional.normalize(self.model(pixels.to(self.device)).float(), dim=-1))
        return torch.cat(chunks) if chunks else torch.empty(0, self.model.num_features, device=self.device)
