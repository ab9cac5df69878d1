"""The built-in pose library: OpenPose-convention rendering, name checks, MediaPipe conversion, plausibility."""

import numpy as np
import pytest

from aldar_lit.pipelines.poses import (COLOURS, KEYPOINT_NAMES, POSES, PoseError, get_pose, keypoints_from_mediapipe,
                                       pose_names, render_openpose)
from aldar_lit.quality.body_pose import out_of_frame, pose_problem


def test_library_has_the_story_poses():
    assert {"standing", "walking", "running", "sitting", "riding", "pointing", "waving"} <= set(pose_names())


@pytest.mark.parametrize("name", sorted(POSES))
def test_rendered_joints_have_openpose_colours_on_black(name):
    keypoints = get_pose(name)
    image = np.asarray(render_openpose(keypoints, 256, 256))
    assert image.shape == (256, 256, 3)
    assert (image[0, 0] == 0).all(), "background must be black"
    for index, point in enumerate(keypoints):
        if point is not None:
            x, y = round(point[0] * 256), round(point[1] * 256)
            x, y = min(x, 255), min(y, 255)
            assert tuple(image[y, x]) == COLOURS[index], KEYPOINT_NAMES[index]


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
