"""The built-in pose library: OpenPose rendering checked against controlnet_aux's, name checks, MediaPipe conversion,
plausibility."""

import importlib.util
import sys
import types

import numpy as np
import pytest

from aldar_lit.pipelines.poses import LIMBS, POSES, get_pose, pose_names, render_openpose
from aldar_lit.quality.body_pose import out_of_frame, pose_problem
from aldar_lit.quality.keypoints import KEYPOINT_NAMES, PoseError, keypoints_from_mediapipe


def test_library_has_the_story_poses():
    assert {"standing", "walking", "running", "sitting", "riding", "pointing", "waving"} <= set(pose_names())


@pytest.fixture(scope="module")
def reference_draw_bodypose():
    """controlnet_aux's `open_pose.util.draw_bodypose`, the renderer behind the OpenPose ControlNets' training maps.

    controlnet_aux's top-level `__init__` imports every detector, and its MediaPipe one needs the legacy
    `mediapipe.solutions` API that MediaPipe 1.x (a dependency here) no longer has; the package's own
    `open_pose` modules are imported as they are, under a package entry that skips that `__init__`.
    """
    spec = importlib.util.find_spec("controlnet_aux")
    assert spec is not None, "controlnet_aux (a dev dependency) is not installed"
    before = set(sys.modules)
    package = types.ModuleType("controlnet_aux")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["controlnet_aux"] = package
    try:
        from controlnet_aux.open_pose.body import Keypoint
        from controlnet_aux.open_pose.util import draw_bodypose

        yield lambda keypoints, size: draw_bodypose(
            np.zeros((size, size, 3), np.uint8), [None if p is None else Keypoint(*p) for p in keypoints])
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


@pytest.mark.parametrize("name", sorted(POSES))
def test_rendering_matches_controlnet_aux(name, reference_draw_bodypose):
    """Every joint and limb has the reference's colour (palette and limb order), and the figures coincide up
    to the rasterisers' edge pixels."""
    keypoints = get_pose(name)
    size = 512  # controlnet_aux draws 4-px limbs and joints, as `render_openpose` does at 512 px
    reference = reference_draw_bodypose(keypoints, size)
    ours = np.asarray(render_openpose(keypoints, size, size))
    assert (ours[0, 0] == 0).all(), "background must be black"
    pixel = [(int(p[0] * size), int(p[1] * size)) for p in keypoints]
    for index, (x, y) in enumerate(pixel):
        assert tuple(ours[y, x]) == tuple(reference[y, x]), f"joint {KEYPOINT_NAMES[index]}"
    for index, (a, b) in enumerate(LIMBS):
        x, y = (pixel[a][0] + pixel[b][0]) // 2, (pixel[a][1] + pixel[b][1]) // 2
        limb = f"{KEYPOINT_NAMES[a]}-{KEYPOINT_NAMES[b]}"
        assert tuple(ours[y, x]) == tuple(reference[y, x]) != (0, 0, 0), f"limb {index} ({limb})"
    assert (ours == reference).all(-1).mean() > 0.99


def test_library_poses_are_plausible_and_distinct():
    for name in pose_names():
        assert pose_problem(get_pose(name)) is None, name
        assert not out_of_frame(get_pose(name))
    renders = {name: np.asarray(render_openpose(get_pose(name), 64, 64)) for name in pose_names()}
    assert not np.array_equal(renders["standing"], renders["pointing"])


def test_unknown_pose_names_the_field_and_lists_known_ones():
    with pytest.raises(PoseError, match=r"scenes\[2\].pose: unknown pose 'flying'.*standing"):
        get_pose("flying", key="scenes[2].pose")


def test_implausible_poses_are_reported():
    points = list(get_pose("standing"))
    points[KEYPOINT_NAMES.index("neck")] = None
    assert "missing landmarks: neck" in pose_problem(points)
    stretched = list(get_pose("standing"))
    stretched[KEYPOINT_NAMES.index("right_wrist")] = (0.37, 1.9)  # forearm longer than the body
    assert "right_elbow-right_wrist" in pose_problem(stretched)
    assert pose_problem(None) == "no body pose detected"
    assert out_of_frame(stretched) is False
    shifted = [None if p is None else (p[0] + 0.7, p[1]) for p in get_pose("standing")]
    assert out_of_frame(shifted)


def test_mediapipe_landmarks_map_to_coco18():
    landmarks = [(i / 100, i / 50, 1.0) for i in range(33)]
    landmarks[16] = (0.9, 0.9, 0.1)  # right wrist barely visible
    keypoints = keypoints_from_mediapipe(landmarks)
    named = dict(zip(KEYPOINT_NAMES, keypoints))
    assert named["nose"] == (0.0, 0.0)
    assert named["left_shoulder"] == (0.11, 0.22) and named["right_shoulder"] == (0.12, 0.24)
    assert named["neck"] == pytest.approx((0.115, 0.23))
    assert named["right_wrist"] is None
    with pytest.raises(PoseError, match="33"):
        keypoints_from_mediapipe(landmarks[:17])
