"""Body-pose checks for QA: MediaPipe Tasks PoseLandmarker (a `.task` model the user downloads) and a
plausibility test on COCO-18 keypoints (`aldar_lit.quality.keypoints`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from PIL import Image

from aldar_lit.quality.keypoints import KEYPOINT_NAMES, Keypoint, keypoints_from_mediapipe
from aldar_lit.quality.mediapipe_tasks import base_options, to_mediapipe_image

REQUIRED = ("nose", "neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip")
LIMB_PAIRS = (("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
              ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
              ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
              ("left_hip", "left_knee"), ("left_knee", "left_ankle"))


def pose_problem(keypoints: Sequence[Keypoint] | None) -> str | None:
    """Why a detected pose is invalid (missing core landmarks, implausible proportions), or None if it is fine.

    Proportions are relative to the torso (neck to mid-hip): shoulders 0.2-1.5 torso lengths apart,
    every visible limb segment 0.15-1.3 torso lengths long; outside those a body is twisted or has
    merged/extra limbs.
    """
    if keypoints is None:
        return "no body pose detected"
    points = dict(zip(KEYPOINT_NAMES, keypoints))
    missing = [name for name in REQUIRED if points[name] is None]
    if missing:
        return f"missing landmarks: {', '.join(missing)}"
    rh, lh = points["right_hip"], points["left_hip"]
    torso = math.dist(points["neck"], ((rh[0] + lh[0]) / 2, (rh[1] + lh[1]) / 2))
    if torso < 1e-3:
        return "torso has zero length"
    shoulders = math.dist(points["right_shoulder"], points["left_shoulder"]) / torso
    if not 0.2 <= shoulders <= 1.5:
        return f"shoulder width {shoulders:.2f} torso lengths"
    for a, b in LIMB_PAIRS:
        if points[a] is not None and points[b] is not None:
            length = math.dist(points[a], points[b]) / torso
            if not 0.15 <= length <= 1.3:
                return f"{a}-{b} is {length:.2f} torso lengths"
    return None


def out_of_frame(keypoints: Sequence[Keypoint] | None) -> bool:
    """True when a core landmark lies outside the image (the character is cut off)."""
    if keypoints is None:
        return False
    points = dict(zip(KEYPOINT_NAMES, keypoints))
    return any(p is not None and not (0 <= p[0] <= 1 and 0 <= p[1] <= 1) for p in (points[n] for n in REQUIRED))


class MediaPipePoseDetector:
    """MediaPipe Tasks PoseLandmarker from a local `.task` model; returns COCO-18 keypoints."""

    name = "mediapipe"

    def __init__(self, model_path: str | os.PathLike, min_visibility: float = 0.5):
        from mediapipe.tasks.python import vision

        options = vision.PoseLandmarkerOptions(
            base_options=base_options(model_path, "qa.detectors.pose_model_path", "pose_landmarker_lite.task"),
            num_poses=1,
        )
        self._landmarker = vision.PoseLandmarker.create_from_options(options)
        self.min_visibility = min_visibility

    def detect(self, image: Image.Image) -> tuple[Keypoint, ...] | None:
        result = self._landmarker.detect(to_mediapipe_image(image))
        if not result.pose_landmarks:
            return None
        landmarks = [(lm.x, lm.y, lm.visibility if lm.visibility is not None else 1.0)
                     for lm in result.pose_landmarks[0]]
        return keypoints_from_mediapipe(landmarks, self.min_visibility)
