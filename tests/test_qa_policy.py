"""Storyboard QA: the seed's auto-fix policy, anomaly verdicts, and FrameQA on real photographs."""

import pytest
from PIL import Image
from skimage import data

from aldar_lit.config import ConfigError
from aldar_lit.pipelines.config import AutoFixConfig, ClipQAConfig, QAConfig
from aldar_lit.quality.frame_qa import FrameQA
from aldar_lit.quality.policy import (CUT_OFF, INVALID_POSE, LOW_IDENTITY, LOW_PROMPT_SCORE, MULTIPLE_FACES, NO_FACE,
                                      TOO_SMALL, Settings, face_failures, next_attempt, rank_key)

FIX = AutoFixConfig()
START = Settings(seed=42, guidance_scale=7.5)


def test_multiple_faces_raise_cfg_to_8_5_with_a_new_seed():
    fix = next_attempt([MULTIPLE_FACES, LOW_PROMPT_SCORE], START, FIX)
    assert fix.settings == Settings(42 + FIX.new_seed_offset, 8.5)
    assert fix.reason.startswith(MULTIPLE_FACES)


def test_no_face_lowers_cfg_to_6_5_with_a_new_seed():
    assert next_attempt([NO_FACE], START, FIX).settings == Settings(1042, 6.5)


def test_invalid_pose_retries_seed_plus_10_at_the_same_cfg():
    assert next_attempt([INVALID_POSE, TOO_SMALL], START, FIX).settings == Settings(52, 7.5)


def test_other_failures_only_change_the_seed():
    for failures in ([LOW_PROMPT_SCORE], [LOW_IDENTITY], [CUT_OFF], [TOO_SMALL]):
        assert next_attempt(failures, START, FIX).settings == Settings(1042, 7.5)


def test_face_priority_over_pose_and_custom_values():
    custom = AutoFixConfig(multiple_faces_cfg=9.0, no_face_cfg=5.0, invalid_pose_seed_offset=3, new_seed_offset=7)
    assert next_attempt([INVALID_POSE, NO_FACE], START, custom).settings == Settings(49, 5.0)
    assert next_attempt([INVALID_POSE], START, custom).settings == Settings(45, 7.5)
    with pytest.raises(ValueError):
        next_attempt([], START, FIX)


def test_face_box_anomalies():
    assert face_failures(0, None, 512, 512, 0.05) == [NO_FACE]
    assert face_failures(1, (200, 100, 90, 90), 512, 512, 0.05) == []
    assert face_failures(2, (200, 100, 90, 90), 512, 512, 0.05) == [MULTIPLE_FACES]
    assert face_failures(1, (200, 100, 20, 20), 512, 512, 0.05) == [TOO_SMALL]
    assert face_failures(1, (0, 100, 90, 90), 512, 512, 0.05) == [CUT_OFF]
    assert face_failures(1, (450, 100, 62, 62), 512, 512, 0.05) == [CUT_OFF]


def test_best_attempt_ranking_prefers_passing_then_fewer_failures_then_scores():
    passing = rank_key(True, [], 0.2, 0.8)
    one = rank_key(False, [LOW_IDENTITY], 0.3, 0.5)
    two = rank_key(False, [LOW_IDENTITY, CUT_OFF], 0.35, 0.6)
    assert passing > one > two
    assert rank_key(False, [NO_FACE], 0.3, None) > rank_key(False, [NO_FACE], 0.1, None)


def test_qa_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="qa.max_attempts"):
        QAConfig(max_attempts=0)
    with pytest.raises(ConfigError, match="qa.prompt_threshold"):
        QAConfig(prompt_threshold=22.0)


@pytest.fixture(scope="module")
def frame_qa() -> FrameQA:
    cfg = QAConfig(prompt_threshold=-1.0, identity_threshold=0.99,
                   clip=ClipQAConfig(model_name="aldar-tiny-clip", pretrained=None))
    return FrameQA(cfg)


def test_frame_qa_on_photographs(frame_qa):
    astronaut = Image.fromarray(data.astronaut())
    box = frame_qa.main_face(astronaut)
    reference = frame_qa.identity_crop(astronaut, box)

    same = frame_qa.evaluate(astronaut, "an astronaut", reference_face=reference)
    assert same.passed, same.failures
    assert same.identity_score == pytest.approx(1.0, abs=1e-4)
    assert len(same.faces) == 1 and same.prompt_score is not None

    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    two = frame_qa.evaluate(pair, "two astronauts", reference_face=reference)
    assert MULTIPLE_FACES in two.failures and not two.passed

    coffee = Image.fromarray(data.coffee())
    none = frame_qa.evaluate(coffee, "a cup of coffee", reference_face=reference)
    assert none.failures == [NO_FACE] and none.identity_score is None


def test_low_prompt_score_and_identity_verdicts(frame_qa):
    astronaut = Image.fromarray(data.astronaut())
    strict = FrameQA(QAConfig(prompt_threshold=1.0, identity_threshold=0.99,
                              clip=ClipQAConfig(model_name="aldar-tiny-clip", pretrained=None)),
                     face_detector=frame_qa.face_detector)
    other_face = frame_qa.identity_crop(Image.fromarray(data.coffee()), frame_qa.main_face(astronaut))
    report = strict.evaluate(astronaut, "an astronaut", reference_face=other_face)
    assert report.failures == [LOW_PROMPT_SCORE, LOW_IDENTITY]
    assert report.to_dict()["scores"]["identity_clip_i"] < 0.99
