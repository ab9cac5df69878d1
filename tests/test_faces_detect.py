"""Face detection on a real photograph (scikit-image's astronaut) with OpenCV's bundled Haar cascade."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from aldar_lit.config import ConfigError
from aldar_lit.config.infer import DetectorConfig
from aldar_lit.data.curation import count_faces
from aldar_lit.quality.faces import (FaceBox, HaarFaceDetector, MediaPipeFaceDetector, build_face_detector, crop_face,
                                    haar_cascade)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def haar() -> HaarFaceDetector:
    return HaarFaceDetector()


def test_one_face_in_the_astronaut_photo(haar, astronaut):
    faces = haar.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    # Eileen Collins' face sits in the upper-middle-left of the 512 x 512 photo.
    assert 150 < face.x + face.w / 2 < 300 and 60 < face.y + face.h / 2 < 170
    assert 60 < face.h < 160


def test_two_faces_side_by_side_and_none_on_blank(haar, astronaut):
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut, (512, 0))
    faces = sorted(haar.detect(pair), key=lambda f: f.x)
    assert len(faces) == 2
    assert faces[1].x - faces[0].x == pytest.approx(512, abs=12)
    assert haar.detect(Image.new("RGB", (512, 512), (128, 128, 128))) == []


def test_face_crop_is_square_grown_and_clipped(astronaut):
    crop = crop_face(astronaut, FaceBox(200, 100, 80, 80), margin=0.5)
    assert crop.size == (160, 160)
    corner = crop_face(astronaut, FaceBox(0, 0, 40, 40), margin=0.5)
    assert corner.size == (60, 60)  # 80 px square centred on (20, 20), clipped at the top-left
    assert np.array_equal(np.asarray(crop), np.asarray(astronaut)[60:220, 160:320])


def test_detector_backends_from_config(tmp_path):
    assert isinstance(build_face_detector(DetectorConfig(face_backend="haar")), HaarFaceDetector)
    assert build_face_detector(DetectorConfig(face_backend="none")) is None
    with pytest.raises(ConfigError, match="qa.detectors.face_model_path"):
        DetectorConfig(face_backend="mediapipe")
    with pytest.raises(ConfigError, match="qa.detectors.face_backend"):
        DetectorConfig(face_backend="dlib")
    with pytest.raises(FileNotFoundError, match="qa.detectors.face_model_path: no such file"):
        MediaPipeFaceDetector(tmp_path / "blaze_face_short_range.tflite")


@pytest.mark.skipif("ALDAR_MEDIAPIPE_FACE_MODEL" not in __import__("os").environ,
                    reason="set ALDAR_MEDIAPIPE_FACE_MODEL to a MediaPipe face detector .tflite (none ships offline)")
def test_mediapipe_tasks_face_detector_on_the_astronaut(astronaut):
    import os

    detector = MediaPipeFaceDetector(os.environ["ALDAR_MEDIAPIPE_FACE_MODEL"])
    faces = detector.detect(astronaut)
    assert len(faces) == 1 and 150 < faces[0].x + faces[0].w / 2 < 300 and faces[0].score > 0.5
    assert detector.detect(Image.new("RGB", (512, 512), (128, 128, 128))) == []


def test_qa_and_curation_share_one_haar_cascade() -> None:
    """Loaded once per process; curation's face count and QA's detector both find the astronaut's face with it."""
    assert HaarFaceDetector()._cascade is haar_cascade() is haar_cascade()
    astronaut = Image.fromarray(data.astronaut())
    assert count_faces(np.asarray(astronaut.convert("L"))) == 1 == len(HaarFaceDetector().detect(astronaut))
