"""A folder of captioned images: discovery with an up-front bad-file policy, and the SDXL training dataset."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset

from aldar_lit.config import BadFilePolicy
from aldar_lit.data.buckets import Bucket, nearest_bucket, resize_and_crop_box
from aldar_lit.data.caches import TensorCache
from aldar_lit.images import (
    DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, DataError, list_image_files, load_rgb, open_checked, read_caption,
)

__all__ = ["CaptionedImage", "CaptionedImageDataset", "DataError", "ScanReport",
           "SkippedFile", "load_rgb", "scan_folder", "with_trigger"]

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"  # Hugging Face imagefolder convention: {"file_name": ..., "text": ...}
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str
    size: tuple[int, int]  # upright (height, width), EXIF orientation applied


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class ScanReport:
    examples: list[CaptionedImage]
    skipped: list[SkippedFile] = field(default_factory=list)

    def skipped_reasons(self) -> str:
        """One indented line per skipped file: the file and why."""
        return "\n".join(f"  {s.reason}" for s in self.skipped)

    def log_summary(self) -> None:
        if self.skipped:
            log.warning("skipped %d of %d image files (data.on_bad_file=skip):\n%s",
                        len(self.skipped), len(self.skipped) + len(self.examples), self.skipped_reasons())


def with_trigger(caption: str, trigger: str) -> str:
    """Put the trigger token first unless the caption already mentions it."""
    caption = " ".join(caption.split())
    return caption if trigger in caption else f"{trigger}, {caption}"


def _metadata_captions(root: Path) -> dict[str, str]:
    path = root / METADATA_FILE
    if not path.is_file():
        return {}
    captions = {}
    for line_no, line in enumerate(read_caption(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            captions[record["file_name"]] = record.get("text", record.get("caption"))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{line_no}: expected a JSON object with `file_name` and `text` ({err})") from err
    return captions


def _upright_size(path: Path, min_side: int, max_pixels: int) -> tuple[int, int]:
    with open_checked(path, max_pixels) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in _SWAPS_SIDES:
            width, height = height, width
    if min(width, height) < min_side:
        raise DataError(f"{path}: {width}x{height} image is below data.min_image_side={min_side}")
    return height, width


def _caption_of(path: Path, root: Path, from_metadata: dict[str, str]) -> str:
    sidecar = path.with_suffix(".txt")
    caption = from_metadata.get(path.relative_to(root).as_posix())
    if caption is None and sidecar.is_file():
        caption = read_caption(sidecar)
    if caption is None or not caption.strip():
        raise DataError(f"{path}: no caption (expected {sidecar.name} beside it or an entry in {METADATA_FILE})")
    return caption


def scan_folder(root: str | Path, trigger: str, on_bad_file: str = "error", min_side: int = 1,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ScanReport:
    """Every usable image under `root` with its caption, each image decoded once to prove it reads.

    A bad file (unreadable, empty, too small or too large, no caption, caption not UTF-8) raises
    `DataError` naming it when `on_bad_file="error"`, and is listed in `ScanReport.skipped` with
    the reason when `on_bad_file="skip"`.
    """
    policies = [policy.value for policy in BadFilePolicy]
    if on_bad_file not in policies:
        raise DataError(f"data.on_bad_file: must be one of {policies}, got {on_bad_file!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root: directory {root} does not exist")
    from_metadata = _metadata_captions(root)
    report = ScanReport(examples=[])
    for path in list_image_files(root):
        try:
            caption = _caption_of(path, root, from_metadata)
            size = _upright_size(path, min_side, max_pixels)
        except DataError as err:
            if on_bad_file == "error":
                raise
            report.skipped.append(SkippedFile(path, str(err)))
            continue
        report.examples.append(CaptionedImage(path, with_trigger(caption, trigger), size))
    if not report.examples:
        bad = f"; all {len(report.skipped)} image files are bad:\n{report.skipped_reasons()}" if report.skipped else ""
        raise DataError(f"data.root: no usable images ({', '.join(IMAGE_SUFFIXES)}) found in {root}{bad}")
    return report


class CaptionedImageDataset(Dataset):
    """SDXL training samples, each resized and cropped to its aspect bucket, with its micro-conditioning.

    Each item holds the `caption` and SDXL's size conditioning: `original_size` (h, w) of the upright
    source image, `crop_top_left` (top, left) of the crop taken from the resized image, `target_size`
    (h, w) of the bucket. The image comes as `pixel_values` in [-1, 1], or, once `use_latent_cache`
    was called, as `latent_dist`: the VAE posterior's parameters (mean and log-variance) from the
    cache, which the module samples from. With `use_text_cache`, `prompt_embeds` and
    `pooled_prompt_embeds` come from the text-embedding cache too.

    An item is asked for by its index, or by `(index, epoch)` as `BucketBatchSampler` does: random crops
    and flips are drawn from a generator seeded by (seed, epoch, index), so a resumed run draws the same.

    A file that turns bad after the scan is replaced by another sample of its bucket (`skip`,
    logged) or raises `DataError` naming it (`error`), so an epoch never dies on one file.
    """

    def __init__(self, examples: list[CaptionedImage], resolution: int, crop: str = "center",
                 random_flip: bool = False, buckets: list[Bucket] | None = None, on_bad_file: str = "skip",
                 max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0):
        self.examples = examples
        self.seed = seed
        self.crop = crop
        self.random_flip = random_flip
        self.on_bad_file = on_bad_file
        self.max_pixels = max_pixels
        self.buckets = buckets or [(resolution, resolution)]
        self.item_buckets = [nearest_bucket(*example.size, self.buckets) for example in examples]
        self.latent_cache: tuple[TensorCache, list[str]] | None = None
        self.text_cache: tuple[TensorCache, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def use_latent_cache(self, cache: TensorCache, keys: list[str]) -> None:
        self.latent_cache = (cache, keys)

    def use_text_cache(self, cache: TensorCache, keys: list[str]) -> None:
        self.text_cache = (cache, keys)

    def planned_crop(self, index: int) -> tuple[int, int]:
        """The (top, left) crop of a center-cropped item: what cached latents were encoded with."""
        return resize_and_crop_box(*self.examples[index].size, self.item_buckets[index], center=True)[1]

    def pixels(self, index: int, epoch: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
        """The item's image in [-1, 1] at its bucket size, and the (top, left) of its crop."""
        example, bucket = self.examples[index], self.item_buckets[index]
        image = load_rgb(example.path, self.max_pixels)
        if (image.height, image.width) != example.size:
            raise DataError(f"{example.path}: changed since the scan ({image.width}x{image.height} now)")
        # (seed, (epoch, index)): nested, so never the (seed, step, index) seed of the module's noise draws
        generator = torch.Generator().manual_seed(hash((self.seed, (epoch, index))) % 2**63)
        resized, (top, left) = resize_and_crop_box(*example.size, bucket, self.crop == "center", generator)
        image = TF.resize(image, list(resized), interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        image = TF.crop(image, top, left, *bucket)
        if self.random_flip and torch.rand((), generator=generator) < 0.5:
            image = TF.hflip(image)
            left = resized[1] - bucket[1] - left  # the crop as seen in the mirrored image
        return TF.normalize(TF.to_tensor(image), [0.5], [0.5]), (top, left)

    def _cached(self, cache: tuple[TensorCache, list[str]], index: int, what: str) -> dict[str, torch.Tensor]:
        store, keys = cache
        entry = store.get(keys[index])
        if entry is None:
            raise DataError(f"{self.examples[index].path}: its {what} cache entry is missing or unreadable")
        return entry

    def _item(self, index: int, epoch: int) -> dict:
        example, bucket = self.examples[index], self.item_buckets[index]
        item = {"index": torch.tensor(index), "caption": example.caption, "original_size": torch.tensor(example.size),
                "target_size": torch.tensor(bucket)}
        if self.latent_cache is not None:
            item["latent_dist"] = self._cached(self.latent_cache, index, "latent")["latent_dist"]
            item["crop_top_left"] = torch.tensor(self.planned_crop(index))
        else:
            item["pixel_values"], crop = self.pixels(index, epoch)
            item["crop_top_left"] = torch.tensor(crop)
        if self.text_cache is not None:
            item.update(self._cached(self.text_cache, index, "text-embedding"))
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        try:
            return self._item(index, epoch)
        except (DataError, OSError) as err:
            if self.on_bad_file == "error":
                raise DataError(str(err)) from err
            first_error = err
        same_bucket = [i for i, b in enumerate(self.item_buckets) if b == self.item_buckets[index]]
        start = same_bucket.index(index)
        for replacement in same_bucket[start + 1:] + same_bucket[:start]:
            try:
                item = self._item(replacement, epoch)
            except (DataError, OSError):
                continue
            log.warning("%s; skipped (data.on_bad_file=skip), using %s instead",
                        first_error, self.examples[replacement].path.name)
            # the index seeds the sample's noise: keep this slot's, as the replacement may be in the batch too
            return {**item, "index": torch.tensor(index)}
        raise DataError(f"no readable sample left in bucket {self.item_buckets[index]}: {first_error}")

