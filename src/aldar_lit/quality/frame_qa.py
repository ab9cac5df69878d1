"""Per-frame QA: prompt fidelity (CLIP-T), identity (CLIP-I of face crops), face/pose/framing anomalies."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from PIL import Image

from aldar_lit.pipelines.config import QAConfig
from aldar_lit.quality.body_pose import MediaPipePoseDetector, out_of_frame, pose_problem
from aldar_lit.quality.clip_scorer import ClipScorer
from aldar_lit.quality.faces import FaceBox, FaceDetector, build_face_detector, crop_face, largest
from aldar_lit.quality.policy import (CUT_OFF, INVALID_POSE, LOW_IDENTITY, LOW_PROMPT_SCORE, face_failures,
                                     rank_key)

IDENTITY_CROP_MARGIN = 0.2


@dataclass
class QAReport:
    passed: bool
    failures: list[str]
    prompt_score: Optional[float]
    identity_score: Optional[float]
    faces: list[FaceBox] = field(default_factory=list)
    pose_problem: Optional[str] = None
    seconds: float = 0.0

    def rank(self) -> tuple:
        return rank_key(self.passed, self.failures, self.prompt_score, self.identity_score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "scores": {"prompt_clip_t": _round(self.prompt_score), "identity_clip_i": _round(self.identity_score)},
            "faces": [f.to_dict() for f in self.faces],
            "pose_problem": self.pose_problem,
            "seconds": round(self.seconds, 4),
        }


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


class FrameQA:
    """All QA models, loaded once; `evaluate` judges one frame."""

    def __init__(self, cfg: QAConfig, device: str | torch.device = "cpu", face_detector: Optional[FaceDetector] = None):
        """`face_detector`: share one already built from `cfg.detectors` (built here when None)."""
        self.cfg = cfg
        self.scorer = ClipScorer(cfg.clip.model_name, cfg.clip.pretrained, device, cfg.clip.seed)
        self.face_detector = face_detector if face_detector is not None else build_face_detector(cfg.detectors)
        detectors = cfg.detectors
        self.pose_detector = (MediaPipePoseDetector(detectors.pose_model_path or "", detectors.pose_min_visibility)
                              if detectors.pose_backend == "mediapipe" else None)

    def main_face(self, image: Image.Image) -> Optional[FaceBox]:
        return largest(self.face_detector.detect(image)) if self.face_detector is not None else None

    def identity_crop(self, image: Image.Image, box: FaceBox) -> Image.Image:
        return crop_face(image, box, IDENTITY_CROP_MARGIN)

    def evaluate(self, image: Image.Image, prompt: str, reference_face: Optional[Image.Image] = None) -> QAReport:
        """Score and check one frame; `reference_face` (frame 1's face crop) enables the identity check."""
        started = time.perf_counter()
        failures: list[str] = []
        prompt_score = float(self.scorer.text_image([image], [prompt])[0])
        if prompt_score < self.cfg.prompt_threshold:
            failures.append(LOW_PROMPT_SCORE)

        faces: list[FaceBox] = []
        identity = None
        if self.face_detector is not None:
            faces = self.face_detector.detect(image)
            main = largest(faces)
            box = None if main is None else (main.x, main.y, main.w, main.h)
            failures += face_failures(len(faces), box, image.width, image.height, self.cfg.min_face_fraction)
            if main is not None and reference_face is not None:
                crop = self.identity_crop(image, main)
                identity = float(self.scorer.image_image([crop], [reference_face])[0])
                if identity < self.cfg.identity_threshold:
                    failures.append(LOW_IDENTITY)

        problem = None
        if self.pose_detector is not None:
            keypoints = self.pose_detector.detect(image)
            problem = pose_problem(keypoints)
            if problem is not None:
                failures.append(INVALID_POSE)
            if out_of_frame(keypoints) and CUT_OFF not in failures:
                failures.append(CUT_OFF)
        return QAReport(not failures, failures, prompt_score, identity, faces, problem,
                        time.perf_counter() - started)
