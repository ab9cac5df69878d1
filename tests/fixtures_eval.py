"""Fixtures for the evaluation tests: real face photographs shipped in packages, a tiny ArcFace ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageEnhance


def astronaut() -> Image.Image:
    """Eileen Collins, NASA portrait (scikit-image)."""
    import skimage.data

    return Image.fromarray(skimage.data.astronaut())


def grace_hopper() -> Image.Image:
    """Grace Hopper, portrait (matplotlib's sample data): a different real person."""
    from matplotlib import cbook

    return Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")


# the six faces of insightface's sample group photo, as dlib's HOG detector boxes them (x, y, width, height)
GROUP_FACES = ((67, 283, 109, 108), (275, 176, 90, 90), (450, 295, 108, 108), (724, 367, 109, 108),
               (870, 67, 130, 130), (1118, 283, 109, 108))


def group_photo_faces() -> list[Image.Image]:
    """Six different real people (insightface's sample `t1.jpg`), each cropped with a face-sized margin."""
    from insightface.data import get_image

    photo = Image.fromarray(get_image("t1", to_rgb=True))
    return [photo.crop((x - w, y - h, x + 2 * w, y + 2 * h)) for x, y, w, h in GROUP_FACES]


def cat() -> Image.Image:
    """No human face (scikit-image's Chelsea)."""
    import skimage.data

    return Image.fromarray(skimage.data.chelsea())


def same_person_variants(image: Image.Image) -> dict[str, Image.Image]:
    """Crop, mirror, rescale and colour-jitter one photo: the same identity, different pixels."""
    w, h = image.size
    return {
        "crop": image.crop((40, 0, w - 60, h - 120)),
        "flip": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "scale": image.resize((int(w * 0.75), int(h * 0.75)), Image.Resampling.BICUBIC),
        "jitter": ImageEnhance.Brightness(ImageEnhance.Color(ImageEnhance.Contrast(image).enhance(1.3)).enhance(0.6))
        .enhance(1.15),
    }


class TinyArcFace(torch.nn.Module):
    """ArcFace's interface (1x3x112x112 -> 512) with seeded random weights."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.PReLU(8),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.PReLU(16),
            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(16 * 16, 512))

    def forward(self, x):
        return self.features(x)


def write_tiny_arcface_onnx(path: Path, seed: int = 0) -> Path:
    """A seeded random ArcFace-shaped ONNX, as insightface's model router expects one (static 112x112 input)."""
    torch.manual_seed(seed)
    model = TinyArcFace().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["input.1"],
                      output_names=["embedding"], dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="session")
def tiny_arcface_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_arcface_onnx(tmp_path_factory.mktemp("arcface") / "tiny_arcface.onnx")


@pytest.fixture(scope="session")
def dlib_embedder():
    from aldar_lit.quality.face_identity import DlibEmbedder

    return DlibEmbedder(upsample=1)
