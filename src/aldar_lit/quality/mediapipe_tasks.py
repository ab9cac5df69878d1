"""What the MediaPipe Tasks detectors share: a local model file (never downloaded) and image conversion."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def base_options(model_path: str | os.PathLike, key: str, example: str) -> Any:
    """`BaseOptions` for a local model file; a missing file names its config `key` and an `example` model."""
    from mediapipe.tasks.python import BaseOptions

    path = Path(model_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}: no such file {str(path)!r} (download a MediaPipe model, e.g. {example})")
    return BaseOptions(model_asset_path=str(path))


def to_mediapipe_image(image: Image.Image) -> Any:
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(np.asarray(image.convert("RGB"))))
