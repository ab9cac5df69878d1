"""A built-in library of named body poses, rendered as OpenPose (COCO-18) control images.

Keypoints are (x, y) in [0, 1] image coordinates of a figure facing the viewer (so the figure's
right side is on the image's left), None where a point is hidden. Rendering follows the OpenPose /
controlnet_aux `draw_bodypose` convention: black background, limbs as ellipses in the limb colour at
60 % intensity, joints as filled circles in the joint colour; this is what OpenPose ControlNets are
trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

from aldar_lit.quality.keypoints import KEYPOINT_NAMES, Keypoint, PoseError, check_keypoints

# OpenPose limb sequence (0-based keypoint pairs) and colours (joint i and limb i share colour i), as drawn by
# controlnet_aux's `open_pose.util.draw_bodypose`: tests/test_pose_library.py compares the two renderings.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


def _pose(head: tuple[float, float], **joints: tuple[float, float] | None) -> tuple[Keypoint, ...]:
    """A COCO-18 keypoint tuple from body joints; the face points are placed around `head` (the nose)."""
    x, y = head
    face = {"nose": head, "right_eye": (x - 0.02, y - 0.02), "left_eye": (x + 0.02, y - 0.02),
            "right_ear": (x - 0.045, y - 0.01), "left_ear": (x + 0.045, y - 0.01)}
    points = {**face, **joints}
    return tuple(points.get(name) for name in KEYPOINT_NAMES)


_TORSO = dict(neck=(0.50, 0.26), right_shoulder=(0.41, 0.28), left_shoulder=(0.59, 0.28),
              right_hip=(0.45, 0.55), left_hip=(0.55, 0.55))

POSES: dict[str, tuple[Keypoint, ...]] = {
    "standing": _pose((0.50, 0.16), **_TORSO,
                      right_elbow=(0.38, 0.41), right_wrist=(0.37, 0.53), left_elbow=(0.62, 0.41),
                      left_wrist=(0.63, 0.53), right_knee=(0.45, 0.72), right_ankle=(0.45, 0.90),
                      left_knee=(0.55, 0.72), left_ankle=(0.55, 0.90)),
    "walking": _pose((0.50, 0.16), **_TORSO,
                     right_elbow=(0.40, 0.41), right_wrist=(0.44, 0.52), left_elbow=(0.60, 0.41),
                     left_wrist=(0.57, 0.52), right_knee=(0.42, 0.72), right_ankle=(0.38, 0.90),
                     left_knee=(0.57, 0.72), left_ankle=(0.62, 0.90)),
    "running": _pose((0.52, 0.17), neck=(0.51, 0.27), right_shoulder=(0.43, 0.29), left_shoulder=(0.60, 0.29),
                     right_elbow=(0.36, 0.38), right_wrist=(0.40, 0.30), left_elbow=(0.67, 0.40),
                     left_wrist=(0.72, 0.48), right_hip=(0.46, 0.55), left_hip=(0.56, 0.55),
                     right_knee=(0.36, 0.68), right_ankle=(0.28, 0.80), left_knee=(0.63, 0.70),
                     left_ankle=(0.60, 0.90)),
    "sitting": _pose((0.50, 0.24), neck=(0.50, 0.34), right_shoulder=(0.41, 0.36), left_shoulder=(0.59, 0.36),
                     right_elbow=(0.38, 0.49), right_wrist=(0.42, 0.59), left_elbow=(0.62, 0.49),
                     left_wrist=(0.58, 0.59), right_hip=(0.45, 0.62), left_hip=(0.55, 0.62),
                     right_knee=(0.40, 0.66), right_ankle=(0.40, 0.86), left_knee=(0.60, 0.66),
                     left_ankle=(0.60, 0.86)),
    "riding": _pose((0.50, 0.14), neck=(0.50, 0.24), right_shoulder=(0.41, 0.26), left_shoulder=(0.59, 0.26),
                    right_elbow=(0.40, 0.38), right_wrist=(0.46, 0.45), left_elbow=(0.60, 0.38),
                    left_wrist=(0.54, 0.45), right_hip=(0.45, 0.50), left_hip=(0.55, 0.50),
                    right_knee=(0.35, 0.58), right_ankle=(0.37, 0.74), left_knee=(0.65, 0.58),
                    left_ankle=(0.63, 0.74)),
    "pointing": _pose((0.50, 0.16), **_TORSO,
                      right_elbow=(0.30, 0.28), right_wrist=(0.17, 0.27), left_elbow=(0.62, 0.41),
                      left_wrist=(0.63, 0.53), right_knee=(0.45, 0.72), right_ankle=(0.45, 0.90),
                      left_knee=(0.55, 0.72), left_ankle=(0.55, 0.90)),
    "waving": _pose((0.50, 0.16), **_TORSO,
                    right_elbow=(0.38, 0.41), right_wrist=(0.37, 0.53), left_elbow=(0.68, 0.20),
                    left_wrist=(0.70, 0.07), right_knee=(0.45, 0.72), right_ankle=(0.45, 0.90),
                    left_knee=(0.55, 0.72), left_ankle=(0.55, 0.90)),
    "arms_crossed": _pose((0.50, 0.16), **_TORSO,
                          right_elbow=(0.40, 0.41), right_wrist=(0.57, 0.37), left_elbow=(0.60, 0.41),
                          left_wrist=(0.43, 0.37), right_knee=(0.45, 0.72), right_ankle=(0.45, 0.90),
                          left_knee=(0.55, 0.72), left_ankle=(0.55, 0.90)),
}


def pose_names() -> list[str]:
    return sorted(POSES)


def get_pose(name: str, key: str = "pose") -> tuple[Keypoint, ...]:
    """The keypoints of a library pose; `key` names the config/story field in the error."""
    if name not in POSES:
        raise PoseError(f"{key}: unknown pose {name!r}; known poses: {pose_names()}")
    return POSES[name]


def render_openpose(keypoints: Sequence[Keypoint], width: int, height: int) -> Image.Image:
    """An OpenPose-style control image (RGB, black background) of one figure."""
    check_keypoints(keypoints)
    scale = min(width, height) / 512
    stick = max(1.0, 4 * scale)
    radius = max(1, round(4 * scale))
    canvas = Image.new("RGB", (width, height))
    limbs = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(limbs)
    pixel = [None if p is None else (p[0] * width, p[1] * height) for p in keypoints]
    for index, (a, b) in enumerate(LIMBS):
        if pixel[a] is None or pixel[b] is None:
            continue
        draw.polygon(_ellipse(pixel[a], pixel[b], stick), fill=COLOURS[index])
    canvas = Image.blend(canvas, limbs, 0.6)
    draw = ImageDraw.Draw(canvas)
    for index, point in enumerate(pixel):
        if point is not None:
            x, y = point
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=COLOURS[index])
    return canvas


def _ellipse(a: tuple[float, float], b: tuple[float, float], half_width: float, segments: int = 24):
    """Polygon of the ellipse spanning a-b with the given half width (cv2.ellipse2Poly's shape)."""
    (xa, ya), (xb, yb) = a, b
    cx, cy = (xa + xb) / 2, (ya + yb) / 2
    half_length = math.hypot(xb - xa, yb - ya) / 2
    angle = math.atan2(yb - ya, xb - xa)
    cos, sin = math.cos(angle), math.sin(angle)
    points = []
    for i in range(segments):
        t = 2 * math.pi * i / segments
        ex, ey = half_length * math.cos(t), half_width * math.sin(t)
        points.append((cx + ex * cos - ey * sin, cy + ex * sin + ey * cos))
    return points
