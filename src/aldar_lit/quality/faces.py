"""Face detection for storyboard QA and for the IP-Adapter's face crop.

Backends: OpenCV's bundled Haar cascade (offline, no download) and MediaPipe Tasks' FaceDetector
(a `.tflite` model the user downloads, e.g. blaze_face_short_range.tflite).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from aldar_lit.quality.mediapipe_tasks import base_options, to_mediapipe_image
from aldar_lit.config.infer import DetectorConfig


@dataclass(frozen=True)
class FaceBox:
    """A face in pixel coordinates: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int
    score: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": round(self.score, 4)}


class FaceDetector(Protocol):
    name: str

    def detect(self, image: Image.Image) -> list[FaceBox]: ...


@lru_cache(maxsize=1)
def haar_cascade():
    """OpenCV's frontal-face Haar cascade, loaded once per process (QA and curation share it)."""
    import cv2

    path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's frontal-face Haar cascade from {path}")
    return cascade


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (`cv2.data.haarcascades`), shipped with opencv-python."""

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 5, min_size_fraction: float = 0.05):
        self._cascade = haar_cascade()
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size_fraction = min_size_fraction

    def detect(self, image: Image.Image) -> list[FaceBox]:
        import cv2

        gray = cv2.equalizeHist(np.asarray(image.convert("L")))
        side = max(8, int(min(gray.shape) * self.min_size_fraction))
        boxes = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor,
                                               minNeighbors=self.min_neighbors, minSize=(side, side))
        return [FaceBox(int(x), int(y), int(w), int(h)) for x, y, w, h in boxes]


class MediaPipeFaceDetector:
    """MediaPipe Tasks FaceDetector from a local `.tflite` model."""

    name = "mediapipe"

    def __init__(self, model_path: str | os.PathLike, min_confidence: float = 0.5):
        from mediapipe.tasks.python import vision

        options = vision.FaceDetectorOptions(
            base_options=base_options(model_path, "qa.detectors.face_model_path", "blaze_face_short_range.tflite"),
            min_detection_confidence=min_confidence,
        )
        self._detector = vision.FaceDetector.create_from_options(options)

    def detect(self, image: Image.Image) -> list[FaceBox]:
        result = self._detector.detect(to_mediapipe_image(image))
        return [FaceBox(d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width,
                        d.bounding_box.height, float(d.categories[0].score) if d.categories else 1.0)
                for d in result.detections]


def build_face_detector(cfg: DetectorConfig) -> FaceDetector | None:
    if cfg.face_backend == "haar":
        return HaarFaceDetector()
    if cfg.face_backend == "mediapipe":
        return MediaPipeFaceDetector(cfg.face_model_path or "", cfg.face_min_confidence)
    return None


def largest(faces: list[FaceBox]) -> FaceBox | None:
    return max(faces, key=lambda f: f.w * f.h, default=None)


def crop_face(image: Image.Image, box: FaceBox, margin: float) -> Image.Image:
    """A square crop around `box`, grown by `margin` x its size on each side, clipped to the image."""
    side = max(box.w, box.h) * (1 + 2 * margin)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    right, bottom = min(image.width, round(cx + side / 2)), min(image.height, round(cy + side / 2))
    return image.crop((left, top, right, bottom))
