"""Storyboard QA: the technical justification's auto-fix policy, anomaly verdicts, and FrameQA on real photographs."""

import json

import pytest
from PIL import Image
from skimage import data

from aldar_lit.config import ClipConfig, ConfigError
from aldar_lit.config.infer import AutoFixConfig, IdentityConfig, QAConfig, to_infer_config
from aldar_lit.pipelines.storyboard import render_storyboard
from aldar_lit.quality.face_identity import DLIB_SAME_PERSON_DISTANCE
from aldar_lit.quality.faces import FaceBox
from aldar_lit.quality.frame_qa import FrameQA
from aldar_lit.pipelines.retry_policy import Settings, next_attempt
from aldar_lit.quality.verdicts import (CUT_OFF, INVALID_POSE, LOW_IDENTITY, LOW_PROMPT_SCORE, MULTIPLE_FACES, NO_FACE,
                                        TOO_SMALL, face_failures, rank_key)
import fixtures_eval
from fixtures_storyboard import TINY_GENERATION, compose_infer, write_story

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
    assert face_failures(1, FaceBox(200, 100, 90, 90), 512, 512, 0.05) == []
    assert face_failures(2, FaceBox(200, 100, 90, 90), 512, 512, 0.05) == [MULTIPLE_FACES]
    assert face_failures(1, FaceBox(200, 100, 20, 20), 512, 512, 0.05) == [TOO_SMALL]
    assert face_failures(1, FaceBox(0, 100, 90, 90), 512, 512, 0.05) == [CUT_OFF]
    assert face_failures(1, FaceBox(450, 100, 62, 62), 512, 512, 0.05) == [CUT_OFF]


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


TINY_CLIP = ClipConfig(model_name="aldar-tiny-clip", pretrained=None)
DLIB = IdentityConfig(backends=["dlib"])


@pytest.fixture(scope="module")
def frame_qa() -> FrameQA:
    """Identity by dlib (the evaluation's offline backend), CLIP-T from a random tiny CLIP, any prompt score passes."""
    return FrameQA(QAConfig(prompt_threshold=-1.0, clip=TINY_CLIP, identity=DLIB))


def test_frame_qa_on_photographs(frame_qa):
    astronaut = Image.fromarray(data.astronaut())
    reference = frame_qa.identity_reference(astronaut, frame_qa.main_face(astronaut))

    same = frame_qa.evaluate(astronaut, "an astronaut", reference)
    assert same.passed, same.failures
    assert same.identity_score == pytest.approx(1.0, abs=1e-4) and same.same_person is True
    assert len(same.faces) == 1 and same.prompt_score is not None

    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    two = frame_qa.evaluate(pair, "two astronauts", reference)
    assert MULTIPLE_FACES in two.failures and not two.passed

    coffee = Image.fromarray(data.coffee())
    none = frame_qa.evaluate(coffee, "a cup of coffee", reference)
    assert none.failures == [NO_FACE] and none.identity_score is None and none.same_person is None


def test_identity_is_the_evaluation_backend_at_its_published_rule(frame_qa):
    """dlib verifies the astronaut's edited photos as her and Grace Hopper as someone else (distance < 0.6)."""
    assert frame_qa.identity.describe() == {
        "backend": "dlib", "model": frame_qa.identity.embedder.version,
        "same_person": f"Euclidean distance < {DLIB_SAME_PERSON_DISTANCE}", "fallback_reason": None, "unavailable": {}}
    astronaut, hopper = fixtures_eval.astronaut(), fixtures_eval.grace_hopper()
    her = frame_qa.identity_reference(astronaut, frame_qa.main_face(astronaut))
    for name, variant in fixtures_eval.same_person_variants(astronaut).items():
        report = frame_qa.evaluate(variant, "an astronaut", her)
        assert report.same_person is True and LOW_IDENTITY not in report.failures, name
    other = frame_qa.evaluate(hopper, "a woman", her)
    assert other.identity_score is not None  # her face was found and measured, and is not the astronaut's
    assert other.same_person is False and LOW_IDENTITY in other.failures
    hopper_reference = frame_qa.identity_reference(hopper, frame_qa.main_face(hopper))
    assert frame_qa.evaluate(astronaut, "an astronaut", hopper_reference).same_person is False
    assert frame_qa.evaluate(hopper, "a woman", hopper_reference).same_person is True


def test_without_the_dlib_model_qa_falls_back_to_clip_and_says_why(tmp_path):
    """A real missing file: dlib's models looked up in an empty folder."""
    empty = tmp_path / "no_dlib_models"
    empty.mkdir()
    qa = FrameQA(QAConfig(prompt_threshold=-1.0, identity_threshold=0.99, clip=TINY_CLIP,
                          identity=IdentityConfig(backends=["dlib"], dlib_models_dir=str(empty))))
    record = qa.identity.describe()
    assert record["backend"] == "clip" and record["same_person"] == "CLIP-I of face crops >= 0.99"
    assert "dlib" in record["fallback_reason"] and str(empty) in record["fallback_reason"]
    assert set(record["unavailable"]) == {"dlib"}
    astronaut = Image.fromarray(data.astronaut())
    crop = qa.identity_reference(astronaut, qa.main_face(astronaut))
    assert isinstance(crop, Image.Image)  # CLIP compares face crops
    same = qa.evaluate(astronaut, "an astronaut", crop)
    assert same.passed and same.identity_score == pytest.approx(1.0, abs=1e-4)


def test_storyboard_manifest_records_the_identity_check_and_its_fallback(tiny_model_dir, tmp_path):
    story = write_story(tmp_path / "one.yaml", [{"text": "aldar_kose_man smiling"}])
    empty = tmp_path / "no_dlib_models"
    empty.mkdir()
    records = {}
    for name, extra in {"dlib": [], "fallback": [f"qa.identity.dlib_models_dir={empty}"]}.items():
        out = tmp_path / name
        config = to_infer_config(compose_infer(["model=tiny", "qa=tiny", "qa.max_attempts=1", "mode=baseline",
                                                "qa.identity.backends=[dlib]", f"story.file={story}",
                                                f"paths.output_dir={out}", *TINY_GENERATION, *extra]))
        render_storyboard(config, out)
        records[name] = json.loads((out / "manifest.json").read_text())["qa"]["identity"]
    assert records["dlib"]["backend"] == "dlib" and records["dlib"]["fallback_reason"] is None
    assert records["fallback"]["backend"] == "clip" and str(empty) in records["fallback"]["fallback_reason"]


def test_low_prompt_score_and_clip_identity_verdicts(frame_qa):
    astronaut = Image.fromarray(data.astronaut())
    strict = FrameQA(QAConfig(prompt_threshold=1.0, identity_threshold=0.99, clip=TINY_CLIP,
                              identity=IdentityConfig(backends=[])), face_detector=frame_qa.face_detector)
    assert strict.identity.describe()["fallback_reason"] == "qa.identity.backends is empty"
    other_face = strict.identity_reference(Image.fromarray(data.coffee()), frame_qa.main_face(astronaut))
    report = strict.evaluate(astronaut, "an astronaut", other_face)
    assert report.failures == [LOW_PROMPT_SCORE, LOW_IDENTITY]
    assert report.to_dict()["scores"]["identity"] < 0.99 and report.to_dict()["same_person"] is False


def test_qa_in_an_evaluation_uses_the_evaluation_identity_backends(tmp_path):
    from aldar_lit.config.evaluate import to_eval_config
    from aldar_lit.evaluation.generation import infer_config, suite_stories
    from test_evaluate import compose_evaluate

    cfg = to_eval_config(compose_evaluate(["model=tiny", "qa=tiny", "modes=[baseline]", "suite.prompts=[a man]",
                                           "identity.backends=[dlib]", "identity.dlib_upsample=2",
                                           f"paths.output_dir={tmp_path}"]))
    story = suite_stories(cfg, tmp_path)[0]
    assert infer_config(cfg, "baseline", story, 0, None).qa.identity == cfg.identity != QAConfig().identity
