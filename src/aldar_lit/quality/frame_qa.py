"""Per-frame QA: prompt fidelity (CLIP-T), identity (same person as frame 1), face/pose/framing anomalies.

Identity is checked with the evaluation's face identity backends (`qa.identity`, the first that loads: an
InsightFace pack when present, dlib offline) at the backend's published same-person rule. When none loads, QA
falls back to CLIP-I of face crops against `qa.identity_threshold` and records why (`FrameQA.identity.describe()`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from PIL import Image

from aldar_lit.config.infer import QAConfig
from aldar_lit.quality.body_pose import MediaPipePoseDetector, out_of_frame, pose_problem
from aldar_lit.quality.clip_scorer import ClipScorer
from aldar_lit.quality.face_identity import FaceIdentityEmbedder, IdentityFace, build_identity_embedders, main_face
from aldar_lit.quality.faces import FaceBox, FaceDetector, build_face_detector, crop_face, largest
from aldar_lit.quality.verdicts import (CUT_OFF, INVALID_POSE, LOW_IDENTITY, LOW_PROMPT_SCORE, face_failures,
                                       rank_key)

IDENTITY_CROP_MARGIN = 0.2
IdentityReference = Union[IdentityFace, Image.Image]  # a backend's face of the reference, or its CLIP face crop


@dataclass(frozen=True)
class IdentityVerdict:
    score: Optional[float]  # the backend's cosine (CLIP fallback: CLIP-I) to the reference; None: no face to score
    same_person: bool


class BackendIdentity:
    """Same person by a face identity backend's published rule (dlib: distance < 0.6, ArcFace: cosine >= 0.4)."""

    def __init__(self, embedder: FaceIdentityEmbedder, unavailable: dict[str, str]):
        self.embedder, self.unavailable = embedder, unavailable

    def reference(self, image: Image.Image, box: FaceBox) -> Optional[IdentityFace]:
        """The backend's largest face in the reference image (None when it finds none)."""
        return main_face(self.embedder.embed(image))

    def verdict(self, image: Image.Image, box: FaceBox, reference: IdentityFace) -> IdentityVerdict:
        """A frame whose face the backend does not find is not verified (as in evaluation's verification rates)."""
        face = main_face(self.embedder.embed(image))
        if face is None:
            return IdentityVerdict(None, False)
        return IdentityVerdict(float(face.embedding @ reference.embedding),
                               self.embedder.verification.same_person(face, reference))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.embedder.name, "model": self.embedder.version,
                "same_person": self.embedder.verification.describe(), "fallback_reason": None,
                "unavailable": dict(self.unavailable)}


class ClipIdentity:
    """The fallback: CLIP-I of face crops (Haar/MediaPipe boxes) at least `threshold`."""

    def __init__(self, scorer: ClipScorer, threshold: float, model: str, reason: str, unavailable: dict[str, str]):
        self.scorer, self.threshold, self.model = scorer, threshold, model
        self.reason, self.unavailable = reason, unavailable

    def reference(self, image: Image.Image, box: FaceBox) -> Image.Image:
        return crop_face(image, box, IDENTITY_CROP_MARGIN)

    def verdict(self, image: Image.Image, box: FaceBox, reference: Image.Image) -> IdentityVerdict:
        score = float(self.scorer.image_image([self.reference(image, box)], [reference])[0])
        return IdentityVerdict(score, score >= self.threshold)

    def describe(self) -> dict[str, Any]:
        return {"backend": "clip", "model": self.model, "same_person": f"CLIP-I of face crops >= {self.threshold}",
                "fallback_reason": self.reason, "unavailable": dict(self.unavailable)}


def build_identity_check(cfg: QAConfig, scorer: ClipScorer, device: str) -> Union[BackendIdentity, ClipIdentity]:
    """The first of `cfg.identity.backends` that loads; CLIP face crops with the reason when none does."""
    loaded, unavailable = build_identity_embedders(cfg.identity, device, first_only=True)
    if loaded:
        return BackendIdentity(next(iter(loaded.values())), unavailable)
    reason = ("qa.identity.backends is empty" if not cfg.identity.backends else
              "no identity backend loaded: " + "; ".join(f"{name}: {why}" for name, why in unavailable.items()))
    return ClipIdentity(scorer, cfg.identity_threshold, f"{cfg.clip.model_name}/{cfg.clip.pretrained}", reason,
                        unavailable)


@dataclass
class QAReport:
    passed: bool
    failures: list[str]
    prompt_score: Optional[float]
    identity_score: Optional[float]
    faces: list[FaceBox] = field(default_factory=list)
    pose_problem: Optional[str] = None
    seconds: float = 0.0
    same_person: Optional[bool] = None  # None: identity not checked (no face or no reference)

    def rank(self) -> tuple:
        return rank_key(self.passed, self.failures, self.prompt_score, self.identity_score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "scores": {"prompt_clip_t": _round(self.prompt_score), "identity": _round(self.identity_score)},
            "same_person": self.same_person,
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
        self.scorer = ClipScorer(cfg.clip.model_name, cfg.clip.pretrained, device, cfg.seed)
        self.identity = build_identity_check(cfg, self.scorer, str(device))
        self.face_detector = face_detector if face_detector is not None else build_face_detector(cfg.detectors)
        detectors = cfg.detectors
        self.pose_detector = (MediaPipePoseDetector(detectors.pose_model_path or "", detectors.pose_min_visibility)
                              if detectors.pose_backend == "mediapipe" else None)

    def main_face(self, image: Image.Image) -> Optional[FaceBox]:
        return largest(self.face_detector.detect(image)) if self.face_detector is not None else None

    def identity_reference(self, image: Image.Image, box: FaceBox) -> Optional[IdentityReference]:
        """What later frames' faces are compared with: the identity backend's face in `image` (None when it finds
        none), or with the CLIP fallback the crop of `box`."""
        return self.identity.reference(image, box)

    def evaluate(self, image: Image.Image, prompt: str, reference: Optional[IdentityReference] = None) -> QAReport:
        """Score and check one frame; `reference` (from `identity_reference` of frame 1) enables the identity check."""
        started = time.perf_counter()
        failures: list[str] = []
        prompt_score = float(self.scorer.text_image([image], [prompt])[0])
        if prompt_score < self.cfg.prompt_threshold:
            failures.append(LOW_PROMPT_SCORE)

        faces: list[FaceBox] = []
        verdict = None
        if self.face_detector is not None:
            faces = self.face_detector.detect(image)
            main = largest(faces)
            failures += face_failures(len(faces), main, image.width, image.height, self.cfg.min_face_fraction)
            if main is not None and reference is not None:
                verdict = self.identity.verdict(image, main, reference)
                if not verdict.same_person:
                    failures.append(LOW_IDENTITY)

        problem = None
        if self.pose_detector is not None:
            keypoints = self.pose_detector.detect(image)
            problem = pose_problem(keypoints)
            if problem is not None:
                failures.append(INVALID_POSE)
            if out_of_frame(keypoints) and CUT_OFF not in failures:
                failures.append(CUT_OFF)
        return QAReport(not failures, failures, prompt_score, None if verdict is None else verdict.score, faces,
                        problem, time.perf_counter() - started, None if verdict is None else verdict.same_person)
