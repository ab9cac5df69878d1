"""The character's reference images for CLIP-I / DINO: one selection rule for checkpoint selection and evaluation.

Training passes its dataset's images (the scan order, which is the sorted file order of `data.root`), evaluation a
folder's sorted image files; both keep `limit` of them evenly spread, so for the same folder both score against
the same references.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from PIL import Image

from aldar_lit.images import DataError, list_image_files, load_rgb

T = TypeVar("T")


def evenly_spread(items: Sequence[T], limit: int) -> list[T]:
    """At most `limit` of `items`, every ceil(len / limit)-th from the first: spread over the whole set."""
    if limit <= 0:
        raise ValueError(f"reference images: limit must be positive, got {limit}")
    stride = max(1, -(-len(items) // limit))
    return list(items[::stride][:limit])


def select_references(paths: Sequence[Path], limit: int) -> list[Image.Image]:
    """The selected reference images, decoded upright in RGB."""
    return [load_rgb(path) for path in evenly_spread(paths, limit)]


def folder_references(root: str | Path, limit: int) -> list[Image.Image]:
    """`select_references` over the sorted image files under `root`; `DataError` naming it when it holds none."""
    path = Path(root).expanduser()
    files = list_image_files(path) if path.is_dir() else []
    if not files:
        raise DataError(f"reference_images: no images in {str(path)!r}")
    return select_references(files, limit)
