"""A folder of captioned images: discovery with up-front validation, and the SDXL training dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"  # Hugging Face imagefolder convention: {"file_name": ..., "text": ...}


class DataError(ValueError):
    """A data problem found before training; the message names the file or config key."""


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str


def with_trigger(caption: str, trigger: str) -> str:
    """Put the trigger token first unless the caption already mentions it."""
    caption = " ".join(caption.split())
    return caption if trigger in caption else f"{trigger}, {caption}"


def _metadata_captions(root: Path) -> dict[str, str]:
    path = root / METADATA_FILE
    if not path.is_file():
        return {}
    captions = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            captions[record["file_name"]] = record.get("text", record.get("caption"))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{line_no}: expected a JSON object with `file_name` and `text` ({err})") from err
    return captions


def _check_image(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as err:  # PIL raises many types for broken files
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def scan_captioned_images(root: str | Path, trigger: str) -> list[CaptionedImage]:
    """Every image under `root` with its caption; any problem raises `DataError` naming the file."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root: directory {root} does not exist")
    from_metadata = _metadata_captions(root)
    examples = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        sidecar = path.with_suffix(".txt")
        caption = from_metadata.get(path.relative_to(root).as_posix())
        if caption is None and sidecar.is_file():
            try:
                caption = sidecar.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{sidecar}: caption is not valid UTF-8 ({err})") from err
        if caption is None or not caption.strip():
            raise DataError(f"{path}: no caption (expected {sidecar.name} beside it or an entry in {METADATA_FILE})")
        _check_image(path)
        examples.append(CaptionedImage(path, with_trigger(caption, trigger)))
    if not examples:
        raise DataError(f"data.root: no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    return examples


def load_rgb(path: Path) -> Image.Image:
    """Decode an image upright (EXIF orientation applied) in RGB."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


class CaptionedImageDataset(Dataset):
    """Square SDXL training samples with the micro-conditioning each one needs.

    Each item holds `pixel_values` in [-1, 1], the `caption`, and the SDXL size conditioning:
    `original_size` (h, w) of the source image and `crop_top_left` (top, left) of the crop taken
    from the resized image, as SDXL was trained with.
    """

    def __init__(self, examples: list[CaptionedImage], resolution: int, crop: str = "center", random_flip: bool = False):
        self.examples = examples
        self.resolution = resolution
        self.crop = crop
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        image = load_rgb(example.path)
        original_size = (image.height, image.width)
        image = TF.resize(image, self.resolution, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        spare_h, spare_w = image.height - self.resolution, image.width - self.resolution
        if self.crop == "center":
            top, left = round(spare_h / 2), round(spare_w / 2)
        else:
            top = int(torch.randint(0, spare_h + 1, ()).item())
            left = int(torch.randint(0, spare_w + 1, ()).item())
        image = TF.crop(image, top, left, self.resolution, self.resolution)
        if self.random_flip and torch.rand(()) < 0.5:
            image = TF.hflip(image)
            left = spare_w - left  # the crop as seen in the mirrored image
        pixels = TF.normalize(TF.to_tensor(image), [0.5], [0.5])
        return {
            "pixel_values": pixels,
            "caption": example.caption,
            "original_size": torch.tensor(original_size),
            "crop_top_left": torch.tensor((top, left)),
        }
