"""The COCO-18 keypoint schema shared by the pose library (`aldar_lit.pipelines.poses`) and the QA's pose check.

Keypoints are (x, y) in [0, 1] image coordinates of a figure facing the viewer (so the figure's
right side is on the image's left), None where a point is hidden.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Keypoint = tuple[float, float] | None

KEYPOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)


class PoseError(ValueError):
    """An unknown pose name or a malformed keypoint set."""


def check_keypoints(keypoints: Sequence[Keypoint]) -> None:
    if len(keypoints) != len(KEYPOINT_NAMES):
        raise PoseError(f"a pose needs {len(KEYPOINT_NAMES)} COCO-18 keypoints, got {len(keypoints)}")
    for name, point in zip(KEYPOINT_NAMES, keypoints):
        if point is not None and not all(math.isfinite(c) for c in point):
            raise PoseError(f"keypoint {name} is not finite: {point}")


# MediaPipe's 33 pose landmarks -> COCO-18 (the neck is the shoulders' midpoint).
MEDIAPIPE_TO_COCO = {"nose": 0, "right_eye": 5, "left_eye": 2, "right_ear": 8, "left_ear": 7,
                     "right_shoulder": 12, "left_shoulder": 11, "right_elbow": 14, "left_elbow": 13,
                     "right_wrist": 16, "left_wrist": 15, "right_hip": 24, "left_hip": 23,
                     "right_knee": 26, "left_knee": 25, "right_ankle": 28, "left_ankle": 27}


def keypoints_from_mediapipe(landmarks: Sequence[tuple[float, float, float]], min_visibility: float = 0.5
                             ) -> tuple[Keypoint, ...]:
    """COCO-18 keypoints from MediaPipe's 33 (x, y, visibility) landmarks (a pose from a reference image)."""
    if len(landmarks) != 33:
        raise PoseError(f"MediaPipe pose landmarks come in 33, got {len(landmarks)}")

    def point(index: int) -> Keypoint:
        x, y, visibility = landmarks[index]
        return (x, y) if visibility >= min_visibility else None

    coco = {name: point(index) for name, index in MEDIAPIPE_TO_COCO.items()}
    right, left = coco["right_shoulder"], coco["left_shoulder"]
    coco["neck"] = None if right is None or left is None else ((right[0] + left[0]) / 2, (right[1] + left[1]) / 2)
    return tuple(coco[name] for name in KEYPOINT_NAMES)
