"""Identity as a verification rate: the share of frames whose face is the reference person by each backend's
published rule, on real photographs (offline): one person's photos verify, seven different people do not."""

from __future__ import annotations


import numpy as np
import pytest

from aldar_lit.artifacts import read_storyboard_manifest
from aldar_lit.evaluation.generation import StoryboardRun
from aldar_lit.evaluation.metrics import Scorers, measure, summarise
from aldar_lit.quality.face_identity import ArcFaceOnnxEmbedder, main_face
from fixtures_eval import (astronaut, cat, dlib_embedder, grace_hopper, group_photo_faces,  # noqa: F401
                           same_person_variants, tiny_arcface_onnx)
from test_eval_bad_input import eval_config, write_manifest


def storyboard(tmp_path, name: str, images) -> StoryboardRun:
    run_dir = tmp_path / name
    write_manifest(run_dir, "simple", [f"frame {i}" for i in range(len(images))], list(range(len(images))), images)
    return StoryboardRun("simple", name, 0, run_dir, read_storyboard_manifest(run_dir), True)


def rates(rows, story: str, metric: str) -> list[float]:
    return [r["value"] for r in rows if r["story"] == story and r["metric"] == metric and r["frame"] > 0]


def test_dlib_verification_separates_one_person_from_seven_others(tmp_path, dlib_embedder):
    """Frame 1 is the astronaut. Same person: four edits of her photo (crop, mirror, rescale, colour). Different
    people: Grace Hopper and the six people of insightface's group photo. Training references: the astronaut."""
    from aldar_lit.quality.clip_scorer import ClipScorer

    same = storyboard(tmp_path, "same", [astronaut(), *same_person_variants(astronaut()).values()])
    others = storyboard(tmp_path, "others", [astronaut(), grace_hopper(), *group_photo_faces()])
    faceless = storyboard(tmp_path, "faceless", [cat(), astronaut(), cat()])
    scorers = Scorers(ClipScorer("aldar-tiny-clip", None), None, {"dlib": dlib_embedder})
    rows = measure([same, others, faceless], scorers, references=[astronaut()]).rows

    assert rates(rows, "same", "face_detected/dlib") == [1.0] * 5
    assert rates(rows, "same", "verified_to_frame1/dlib")[1:] == [1.0] * 4  # same-person rate 4/4
    assert rates(rows, "same", "verified_to_train/dlib") == [1.0] * 5
    assert rates(rows, "others", "face_detected/dlib") == [1.0] * 8  # every person found, none verified:
    assert rates(rows, "others", "verified_to_frame1/dlib")[1:] == [0.0] * 7  # different-person rate 0/7
    assert rates(rows, "others", "verified_to_train/dlib") == [1.0] + [0.0] * 7
    assert np.isnan(rates(rows, "others", "verified_to_frame1/dlib")[0])  # frame 1 is not compared with itself
    # frames without a face count as failures, and so does every frame when frame 1 has none to keep
    assert rates(rows, "faceless", "verified_to_frame1/dlib")[1:] == [0.0, 0.0]
    assert rates(rows, "faceless", "verified_to_train/dlib") == [0.0, 1.0, 0.0]

    summary = {(r["metric"]): r for r in summarise([r for r in rows if r["story"] != "faceless"], ["simple"],
                                                   200, 0.95, 0)}
    rate = summary["verified_to_frame1/dlib"]
    assert (rate["n"], rate["n_total"]) == (11, 13) and rate["mean"] == pytest.approx(4 / 11)


def test_dlib_rule_is_distance_on_raw_descriptors(dlib_embedder):
    """dlib's 0.6 applies to its descriptors as computed (norm ~1.4), not to the unit-normalised vectors."""
    face = main_face(dlib_embedder.embed(astronaut()))
    other = main_face(dlib_embedder.embed(grace_hopper()))
    assert 1.2 < np.linalg.norm(face.descriptor) < 1.7
    raw = float(np.linalg.norm(face.descriptor - other.descriptor))
    assert 0.6 < raw < 0.8  # different people, by dlib's rule
    rule = dlib_embedder.verification
    assert rule.same_person(face, face) and not rule.same_person(face, other)


def test_arcface_rule_is_insightfaces_own_decision(tiny_arcface_onnx):
    """The ArcFace threshold and comparison are those of InsightFace's package (compare_embeddings), for pairs of
    embeddings at cosines across [-1, 1] and just either side of the threshold."""
    from insightface.gui.core.constants import DEFAULT_THRESHOLD
    from insightface.gui.core.recognition import compare_embeddings

    from aldar_lit.config.evaluate import IdentityConfig
    from aldar_lit.quality.face_identity import IdentityFace
    from aldar_lit.quality.faces import FaceBox

    assert IdentityConfig().arcface_same_person_cosine == DEFAULT_THRESHOLD
    embedder = ArcFaceOnnxEmbedder(tiny_arcface_onnx, same_person_cosine=IdentityConfig().arcface_same_person_cosine)
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(512, 2)))[0].T.astype(np.float32)  # two orthonormal 512-d directions
    reference = IdentityFace(FaceBox(0, 0, 1, 1), basis[0])
    decisions = []
    for cosine in [*np.linspace(-1, 1, 41), DEFAULT_THRESHOLD - 1e-3, DEFAULT_THRESHOLD + 1e-3]:
        direction = (cosine * basis[0] + np.sqrt(1 - cosine**2) * basis[1]).astype(np.float32)
        other = IdentityFace(FaceBox(0, 0, 1, 1), direction)
        decisions.append((embedder.verification.same_person(reference, other),
                          compare_embeddings(reference.embedding, other.embedding)["decision"] == "Same Person"))
    assert all(ours == theirs for ours, theirs in decisions)
    assert decisions[-2:] == [(False, False), (True, True)]
