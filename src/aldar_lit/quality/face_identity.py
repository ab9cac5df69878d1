"""Face identity embeddings: every face in an image as (box, L2-normalised embedding), from one of three backends.

- `insightface`: an InsightFace model pack (`FaceAnalysis`, default `buffalo_l`: SCRFD detector + ArcFace
  R50, 512-d) under `root/models/<pack>/`. Never downloaded here: an absent pack raises `FaceModelMissing`
  saying how to get it.
- `arcface_onnx`: a single ArcFace ONNX file loaded by `insightface.model_zoo.get_model(path)`, aligned
  on five keypoints taken from dlib's 68-point landmarks (for ArcFace models without their pack's detector).
- `dlib`: dlib's ResNet face recognition model (128-d) with its HOG detector and 5-point aligner; the
  weights ship in the `face-recognition-models` wheel, so this backend runs offline.

Cosines between faces of one person are high and those between different people lower on every backend,
but the scales differ (dlib's descriptors are not centred: different people still score ~0.85-0.9), so
compare numbers only within one backend. Each backend also decides "same person" by its published rule
(`VerificationRule`): dlib's Euclidean distance below 0.6 on its raw descriptors, ArcFace's cosine of at least 0.4.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TypeVar

import numpy as np
from PIL import Image

from aldar_lit.config.infer import ARCFACE_SAME_PERSON_COSINE, DLIB_SAME_PERSON_DISTANCE
from aldar_lit.quality.faces import FaceBox

if TYPE_CHECKING:
    from aldar_lit.config.infer import IdentityConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
INSIGHTFACE_HELP = ("download the pack once (e.g. https://github.com/deepinsight/insightface/releases/download/"
                    "v0.7/{pack}.zip), unzip it so that {dir}/*.onnx exist, or set the pack root with "
                    "identity.insightface_root; other metrics still run without it")


class FaceModelUnavailable(Exception):
    """A face identity backend that cannot run; callers report it and carry on without that backend."""


class FaceModelMissing(FaceModelUnavailable, FileNotFoundError):
    """A face model that is not on disk; the message says how to get it."""


class FaceModelBroken(FaceModelUnavailable, ValueError):
    """A face model file that is on disk but does not load as the model expected (corrupt, truncated, wrong kind)."""


def load_model_file(backend: str, path: str | os.PathLike, loader: Callable[[str], T]) -> T:
    """`loader(path)`, with any failure to read the file (onnxruntime and dlib raise their own exception types)
    turned into `FaceModelBroken` naming the backend and the file."""
    try:
        return loader(str(path))
    except Exception as err:
        raise FaceModelBroken(f"identity backend {backend}: cannot load {str(path)!r} ({type(err).__name__}: "
                              f"{err}); the file is corrupt, truncated or not a model of this kind") from err


@dataclass(frozen=True)
class IdentityFace:
    box: FaceBox
    embedding: np.ndarray  # (D,) float32, unit L2 norm
    score: float = 1.0
    descriptor: Optional[np.ndarray] = None  # the model's raw output where its verification rule needs it (dlib)

    @property
    def area(self) -> int:
        return self.box.w * self.box.h


@dataclass(frozen=True)
class VerificationRule:
    """A backend's same-person decision: Euclidean distance of raw descriptors below `threshold` ("euclidean"), or
    cosine of the unit embeddings at least `threshold` ("cosine")."""

    metric: str
    threshold: float

    def same_person(self, a: IdentityFace, b: IdentityFace) -> bool:
        if self.metric == "euclidean":
            return float(np.linalg.norm(a.descriptor - b.descriptor)) < self.threshold
        return float(a.embedding @ b.embedding) >= self.threshold

    def describe(self) -> str:
        return (f"Euclidean distance < {self.threshold}" if self.metric == "euclidean"
                else f"cosine >= {self.threshold}")


class FaceIdentityEmbedder(Protocol):
    name: str
    version: str  # model files / pack, for reports
    verification: VerificationRule

    def embed(self, image: Image.Image) -> list[IdentityFace]: ...


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).ravel()
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def main_face(faces: list[IdentityFace]) -> Optional[IdentityFace]:
    """The largest face: the character in a storyboard frame."""
    return max(faces, key=lambda f: f.area, default=None)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def face_recognition_models_dir() -> Path:
    """The model folder of the `face-recognition-models` package, found without importing it (its
    `__init__` needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelMissing("identity backend dlib: the face-recognition-models package is not installed "
                               "(pip install face-recognition-models dlib-bin)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _dlib_file(models_dir: Path, name: str) -> str:
    path = models_dir / name
    if not path.is_file():
        raise FaceModelMissing(f"identity backend dlib: no {name} in {str(models_dir)!r} "
                               "(reinstall face-recognition-models)")
    return str(path)


class DlibDetector:
    """dlib's HOG frontal-face detector (built into dlib) plus a shape predictor from face-recognition-models."""

    def __init__(self, landmarks: str = "shape_predictor_5_face_landmarks.dat", upsample: int = 1,
                 models_dir: Optional[Path] = None):
        import dlib

        self.models_dir = models_dir or face_recognition_models_dir()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = load_model_file("dlib", _dlib_file(self.models_dir, landmarks), dlib.shape_predictor)
        self.upsample = upsample

    def detect(self, rgb: np.ndarray) -> list:
        """[(dlib.rectangle, score, dlib.full_object_detection)] for each face."""
        rects, scores, _ = self.detector.run(rgb, self.upsample, 0.0)
        return [(rect, float(score), self.predictor(rgb, rect)) for rect, score in zip(rects, scores)]


def _box(rect, width: int, height: int) -> FaceBox:
    left, top = max(0, rect.left()), max(0, rect.top())
    right, bottom = min(width, rect.right() + 1), min(height, rect.bottom() + 1)
    return FaceBox(left, top, max(0, right - left), max(0, bottom - top))


class DlibEmbedder:
    """dlib ResNet face descriptors (128-d, `dlib_face_recognition_resnet_model_v1.dat`), unit-normalised."""

    name = "dlib"

    def __init__(self, upsample: int = 1, num_jitters: int = 0, models_dir: Optional[Path] = None,
                 same_person_distance: float = DLIB_SAME_PERSON_DISTANCE):
        import dlib

        self.faces = DlibDetector(upsample=upsample, models_dir=models_dir)
        weights = _dlib_file(self.faces.models_dir, "dlib_face_recognition_resnet_model_v1.dat")
        self.model = load_model_file("dlib", weights, dlib.face_recognition_model_v1)
        self.num_jitters = num_jitters
        self.verification = VerificationRule("euclidean", same_person_distance)
        self.version = f"dlib {dlib.__version__} resnet_model_v1 (HOG detector, upsample {upsample})"

    def embed(self, image: Image.Image) -> list[IdentityFace]:
        rgb = _rgb(image)
        faces = []
        for rect, score, shape in self.faces.detect(rgb):
            descriptor = np.array(self.model.compute_face_descriptor(rgb, shape, self.num_jitters), dtype=np.float32)
            faces.append(IdentityFace(_box(rect, rgb.shape[1], rgb.shape[0]), unit(descriptor), score, descriptor))
        return faces


def arcface_keypoints(shape) -> np.ndarray:
    """ArcFace's five alignment points (eye centres, nose tip, mouth corners) from dlib's 68 landmarks."""
    points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


class ArcFaceOnnxEmbedder:
    """One ArcFace ONNX model through `insightface.model_zoo.get_model`, aligned on dlib landmarks."""

    name = "arcface_onnx"

    def __init__(self, model_path: str | os.PathLike, upsample: int = 1, models_dir: Optional[Path] = None,
                 same_person_cosine: float = ARCFACE_SAME_PERSON_COSINE):
        from insightface.model_zoo import get_model

        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FaceModelMissing(f"identity.arcface_onnx_path: no such file {str(path)!r} (an ArcFace .onnx, "
                                   "e.g. w600k_r50.onnx from the buffalo_l pack)")
        model = load_model_file(self.name, path, lambda file: get_model(file, providers=["CPUExecutionProvider"]))
        if model is None or getattr(model, "taskname", None) != "recognition":
            raise FaceModelBroken(f"identity.arcface_onnx_path: {str(path)!r} is not an ArcFace recognition model "
                             f"(insightface routed it to {getattr(model, 'taskname', None)!r})")
        model.prepare(ctx_id=-1)
        self.model = model
        self.faces = DlibDetector("shape_predictor_68_face_landmarks.dat", upsample, models_dir)
        self.verification = VerificationRule("cosine", same_person_cosine)
        self.version = f"ArcFace ONNX {path.name} (dlib HOG detector, 68-point alignment)"

    def embed(self, image: Image.Image) -> list[IdentityFace]:
        from insightface.app.common import Face

        rgb = _rgb(image)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        faces = []
        for rect, score, shape in self.faces.detect(rgb):
            face = Face(bbox=np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32),
                        kps=arcface_keypoints(shape), det_score=score)
            faces.append(IdentityFace(_box(rect, rgb.shape[1], rgb.shape[0]), unit(self.model.get(bgr, face)), score))
        return faces


class InsightFaceEmbedder:
    """An InsightFace model pack (detector + ArcFace) via `FaceAnalysis`, loaded only from disk."""

    name = "insightface"

    def __init__(self, pack: str = "buffalo_l", root: str | os.PathLike = "~/.insightface", det_size: int = 640,
                 device: str = "cpu", same_person_cosine: float = ARCFACE_SAME_PERSON_COSINE):
        from insightface.app import FaceAnalysis

        pack_dir = Path(root).expanduser() / "models" / pack
        if not sorted(pack_dir.glob("*.onnx")):
            raise FaceModelMissing(f"identity backend insightface: model pack {pack!r} not found at "
                                   f"{str(pack_dir)!r}: " + INSIGHTFACE_HELP.format(pack=pack, dir=pack_dir))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else [
            "CPUExecutionProvider"]
        try:
            self.app = FaceAnalysis(name=pack, root=str(Path(root).expanduser()),
                                    allowed_modules=["detection", "recognition"], providers=providers)
        except AssertionError as err:  # FaceAnalysis asserts a detector is among the pack's models
            raise FaceModelMissing(f"identity backend insightface: {str(pack_dir)!r} holds no face detector model "
                                   "(an incomplete pack?): " + INSIGHTFACE_HELP.format(pack=pack, dir=pack_dir)) from err
        except Exception as err:  # onnxruntime's own exception types; their message names the unreadable file
            raise FaceModelBroken(f"identity backend insightface: model pack {pack!r} at {str(pack_dir)!r} does not "
                                  f"load ({type(err).__name__}: {err}); replace the corrupt file: "
                                  + INSIGHTFACE_HELP.format(pack=pack, dir=pack_dir)) from err
        if "recognition" not in self.app.models:
            raise FaceModelMissing(f"identity backend insightface: {str(pack_dir)!r} holds no recognition model: "
                                   + INSIGHTFACE_HELP.format(pack=pack, dir=pack_dir))
        self.app.prepare(ctx_id=0 if device.startswith("cuda") else -1, det_size=(det_size, det_size))
        self.verification = VerificationRule("cosine", same_person_cosine)
        self.version = f"insightface pack {pack} ({', '.join(sorted(p.name for p in pack_dir.glob('*.onnx')))})"

    def embed(self, image: Image.Image) -> list[IdentityFace]:
        rgb = _rgb(image)
        faces = []
        for face in self.app.get(np.ascontiguousarray(rgb[:, :, ::-1])):
            x1, y1, x2, y2 = (int(round(v)) for v in face.bbox)
            x1, y1 = max(0, x1), max(0, y1)
            box = FaceBox(x1, y1, max(0, min(rgb.shape[1], x2) - x1), max(0, min(rgb.shape[0], y2) - y1))
            faces.append(IdentityFace(box, unit(face.embedding), float(face.det_score)))
        return faces


def build_identity_embedder(name: str, cfg: IdentityConfig, device: str = "cpu") -> FaceIdentityEmbedder:
    """Backend `name` as `cfg` configures it; `FaceModelUnavailable` when its model files are absent or corrupt."""
    models_dir = None if cfg.dlib_models_dir is None else Path(cfg.dlib_models_dir).expanduser()
    if name == "insightface":
        return InsightFaceEmbedder(cfg.insightface_pack, cfg.insightface_root, cfg.insightface_det_size, device,
                                   cfg.arcface_same_person_cosine)
    if name == "arcface_onnx":
        return ArcFaceOnnxEmbedder(cfg.arcface_onnx_path or "", cfg.dlib_upsample, models_dir,
                                   same_person_cosine=cfg.arcface_same_person_cosine)
    return DlibEmbedder(upsample=cfg.dlib_upsample, models_dir=models_dir,
                        same_person_distance=cfg.dlib_same_person_distance)


def build_identity_embedders(cfg: IdentityConfig, device: str = "cpu",
                             first_only: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """The configured backends that load (only the first one with `first_only`), and the others tried with the
    reason they did not (an absent or corrupt model file)."""
    loaded, unavailable = {}, {}
    for name in cfg.backends:
        try:
            loaded[name] = build_identity_embedder(name, cfg, device)
        except FaceModelUnavailable as err:
            log.warning("face identity backend %s skipped: %s", name, err)
            unavailable[name] = str(err)
            continue
        if first_only:
            break
    return loaded, unavailable
