"""Typed storyboard configuration (`conf/infer.yaml` composes into `infer_schema`), validated before any work.

The model group is the training one (`aldar_lit.config.train.ModelConfig`), so `model=tiny` / `model=sdxl_base`
mean the same thing for train.py and infer.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from aldar_lit.config.core import check_choices, require, to_schema
from aldar_lit.config.shared import TRIGGER, ClipConfig, PathsConfig
from aldar_lit.config.train import ModelConfig, PredictionType


# The face identity backends' published same-person rules (aldar_lit.quality.face_identity applies them):
# dlib's documented rule: "if two face descriptor vectors have a Euclidean distance between them less than 0.6 then
# they are from the same person" (dlib.net/face_recognition.py.html, examples/dnn_face_recognition_ex.cpp)
DLIB_SAME_PERSON_DISTANCE = 0.6
# InsightFace's own same-person decision on ArcFace embeddings: cosine >= 0.4 (insightface 2.1,
# insightface/gui/core/recognition.py compare_embeddings with constants.DEFAULT_THRESHOLD). Its verification
# benchmarks (recognition/arcface_torch/eval/verification.py) fit a threshold per dataset by 10-fold cross-validation
# instead of publishing one.
ARCFACE_SAME_PERSON_COSINE = 0.4


class Mode(StrEnum):
    baseline = "baseline"  # SDXL alone
    simple = "simple"  # SDXL + LoRA
    ref_guided = "ref_guided"  # + IP-Adapter (frame-1 face) + OpenPose ControlNet


MODES = tuple(mode.value for mode in Mode)


class FaceBackend(StrEnum):
    haar = "haar"  # OpenCV's bundled cascade, offline
    mediapipe = "mediapipe"
    none = "none"


class PoseBackend(StrEnum):
    mediapipe = "mediapipe"
    none = "none"


class RandomAdapter(StrEnum):
    tiny = "tiny"


class IdentityBackend(StrEnum):
    insightface = "insightface"
    arcface_onnx = "arcface_onnx"
    dlib = "dlib"


class SharedBlock(StrEnum):
    down = "down"
    mid = "mid"
    up = "up"


@dataclass
class LLMConfig:
    """Splits a one-paragraph story into scenes through an OpenAI-compatible chat API (key: OPENAI_API_KEY)."""

    model: str = "gpt-4o-mini"
    base_url: Optional[str] = None  # None: api.openai.com; any OpenAI-compatible server otherwise
    num_scenes: int = 6
    timeout_s: float = 60.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        require(bool(self.model), "story.llm.model", "must name a chat model")
        require(1 <= self.num_scenes <= 64, "story.llm.num_scenes", f"must be in [1, 64], got {self.num_scenes}")
        require(self.timeout_s > 0, "story.llm.timeout_s", f"must be positive, got {self.timeout_s}")
        require(self.max_retries >= 0, "story.llm.max_retries", f"must be >= 0, got {self.max_retries}")


@dataclass
class StoryConfig:
    """Either a scene file (YAML/JSON) or a paragraph for the LLM to split."""

    file: Optional[str] = None  # YAML/JSON scene list (relative: to the working directory, else beside conf/)
    text: Optional[str] = None  # or a paragraph for the LLM; then set story.file=null
    trigger: str = TRIGGER  # the LoRA's trigger token, put in every prompt
    style: str = "3d render, soft cinematic light, Kazakh steppe"  # appended to every prompt
    llm: LLMConfig = field(default_factory=LLMConfig)

    def __post_init__(self) -> None:
        require((self.file is None) != (self.text is None), "story",
                 "give exactly one of story.file (a scene list) or story.text (a paragraph for the LLM)")
        if self.text is not None:
            require(bool(self.text.strip()), "story.text", "is empty")


@dataclass
class GenerationConfig:
    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance_scale: float = 7.5
    seed: int = 42  # scene i uses seed + i unless the scene sets its own
    negative_prompt: str = "blurry, deformed, extra limbs, extra heads, duplicate, cropped, lowres"
    device: str = "auto"  # auto: cuda when available
    # what the UNet predicts (epsilon | v_prediction); None: the LoRA's adapter card, else the base model's scheduler
    prediction_type: Optional[PredictionType] = None

    def __post_init__(self) -> None:
        check_choices(self, "generation")
        for key in ("width", "height"):
            value = getattr(self, key)
            require(value >= 8 and value % 8 == 0, f"generation.{key}",
                     f"must be a positive multiple of 8, got {value}")
        require(self.steps > 0, "generation.steps", f"must be positive, got {self.steps}")
        require(self.guidance_scale >= 0, "generation.guidance_scale", f"must be >= 0, got {self.guidance_scale}")


@dataclass
class IPAdapterConfig:
    """An IP-Adapter in the h94/IP-Adapter layout, loaded with diffusers' `load_ip_adapter`."""

    repo: str = "h94/IP-Adapter"  # hub id or local dir
    subfolder: str = "sdxl_models"
    weight_name: str = "ip-adapter-plus-face_sdxl_vit-h.safetensors"
    image_encoder_folder: str = "models/image_encoder"  # the ViT-H encoder, relative to `repo`
    scale: float = 0.7  # the technical justification's value: face identity vs. prompt freedom
    face_margin: float = 0.4  # face box grown by this fraction on each side before cropping
    random_init: Optional[RandomAdapter] = None  # tiny: write tiny seeded weights to `repo` once (offline tests)
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices(self, "adapters.ip_adapter")
        require(self.scale >= 0, "adapters.ip_adapter.scale", f"must be >= 0, got {self.scale}")
        require(self.face_margin >= 0, "adapters.ip_adapter.face_margin", f"must be >= 0, got {self.face_margin}")


@dataclass
class ControlNetConfig:
    """An OpenPose ControlNet for SDXL, loaded with `ControlNetModel.from_pretrained`."""

    pretrained: str = "thibaud/controlnet-openpose-sdxl-1.0"
    variant: Optional[str] = None
    conditioning_scale: float = 0.8
    random_init: Optional[RandomAdapter] = None  # tiny: made from the tiny UNet, written to `pretrained` once
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices(self, "adapters.controlnet")
        require(self.conditioning_scale >= 0, "adapters.controlnet.conditioning_scale",
                 f"must be >= 0, got {self.conditioning_scale}")


@dataclass
class AdaptersConfig:
    ip_adapter: IPAdapterConfig = field(default_factory=IPAdapterConfig)
    controlnet: ControlNetConfig = field(default_factory=ControlNetConfig)
    default_pose: str = "standing"  # pose of scenes that name none (ref_guided frames 2..N)
    reference_image: Optional[str] = None  # identity anchor instead of frame 1 (its face is cropped)


@dataclass
class DetectorConfig:
    face_backend: FaceBackend = FaceBackend.haar
    face_model_path: Optional[str] = None  # MediaPipe face detector, e.g. ~/models/blaze_face_short_range.tflite
    face_min_confidence: float = 0.5
    pose_backend: PoseBackend = PoseBackend.none  # mediapipe: invalid-pose and cut-off checks from the pose landmarker
    pose_model_path: Optional[str] = None  # MediaPipe pose landmarker .task
    pose_min_visibility: float = 0.5

    def __post_init__(self) -> None:
        check_choices(self, "qa.detectors")
        if self.face_backend == "mediapipe":
            require(bool(self.face_model_path), "qa.detectors.face_model_path",
                     "the mediapipe face backend needs a face detector .tflite (e.g. blaze_face_short_range.tflite)")
        if self.pose_backend == "mediapipe":
            require(bool(self.pose_model_path), "qa.detectors.pose_model_path",
                     "the mediapipe pose backend needs a pose landmarker .task (e.g. pose_landmarker_lite.task)")


@dataclass
class AutoFixConfig:
    """The technical justification's fixes: more faces than one -> higher CFG, none -> lower CFG, bad pose ->
    seed + 10."""

    multiple_faces_cfg: float = 8.5
    no_face_cfg: float = 6.5
    invalid_pose_seed_offset: int = 10
    new_seed_offset: int = 1000  # "new seed" = previous seed + this


@dataclass
class IdentityConfig:
    """Face identity backends (aldar_lit.quality.face_identity); one that cannot load is reported and skipped.

    evaluate.py's `identity` and frame QA's `qa.identity` (which uses the first backend that loads)."""

    # a backend whose models are absent is reported and skipped
    backends: list[IdentityBackend] = field(
        default_factory=lambda: [IdentityBackend.insightface, IdentityBackend.dlib])
    insightface_pack: str = "buffalo_l"  # ~/.insightface/models/buffalo_l/*.onnx (never downloaded by this tool)
    insightface_root: str = "~/.insightface"
    insightface_det_size: int = 640
    arcface_onnx_path: Optional[str] = None
    dlib_upsample: int = 1  # HOG detector upsampling: 1 finds faces down to ~40 px
    dlib_models_dir: Optional[str] = None  # dlib's .dat model files; None: those of the face-recognition-models wheel
    # same-person thresholds of the verification rates, each backend's published rule (sources above)
    dlib_same_person_distance: float = DLIB_SAME_PERSON_DISTANCE  # Euclidean, raw 128-d descriptors, below = same
    arcface_same_person_cosine: float = ARCFACE_SAME_PERSON_COSINE  # insightface and arcface_onnx, at least = same

    def __post_init__(self) -> None:
        check_choices(self, "identity")
        require(self.dlib_same_person_distance > 0, "identity.dlib_same_person_distance",
                f"must be positive, got {self.dlib_same_person_distance}")
        require(-1 < self.arcface_same_person_cosine < 1, "identity.arcface_same_person_cosine",
                f"must be in (-1, 1), got {self.arcface_same_person_cosine}")
        if "arcface_onnx" in self.backends:
            require(bool(self.arcface_onnx_path), "identity.arcface_onnx_path", "the arcface_onnx backend needs a file")


@dataclass
class QAConfig:
    enabled: bool = True
    max_attempts: int = 3
    # CLIP-T (raw text-image cosine, OpenAI CLIP ViT-L/14). The document's 0.70 is a CLIP-I (image-image) value and is
    # unreachable on this scale: prompt-faithful generations score ~0.25-0.35 with ViT-L/14 (DreamBooth reports 0.306,
    # Ruiz et al. 2023) and unrelated image/text pairs ~0.10-0.18. 0.22 rejects frames that have lost the prompt while
    # accepting normal variation. Not measured here (no CLIP weights offline): recalibrate on your own frames.
    prompt_threshold: float = 0.22
    identity_threshold: float = 0.70  # CLIP fallback only (no identity backend loads): CLIP-I of face crops
    min_face_fraction: float = 0.05  # face box height / image height below this: character too small
    clip: ClipConfig = field(default_factory=ClipConfig)
    seed: int = 0  # of QA's CLIP with random weights (clip.pretrained=null)
    detectors: DetectorConfig = field(default_factory=DetectorConfig)
    autofix: AutoFixConfig = field(default_factory=AutoFixConfig)
    # same person as frame 1 by the first backend that loads, at its published rule; the manifest's qa.identity
    # records the backend used, or why CLIP face crops were used instead
    identity: IdentityConfig = field(default_factory=IdentityConfig)

    def __post_init__(self) -> None:
        require(self.max_attempts >= 1, "qa.max_attempts", f"must be >= 1, got {self.max_attempts}")
        require(-1.0 <= self.prompt_threshold <= 1.0, "qa.prompt_threshold", "is a cosine, must be in [-1, 1]")
        require(-1.0 <= self.identity_threshold <= 1.0, "qa.identity_threshold", "is a cosine, must be in [-1, 1]")
        require(0.0 <= self.min_face_fraction < 1.0, "qa.min_face_fraction", "must be in [0, 1)")


@dataclass
class LoraSourceConfig:
    """A trained adapter: a training run's `lora/` dir (pytorch_lora_weights.safetensors)."""

    path: Optional[str] = None  # a training run's lora/ dir (ignored by mode=baseline: SDXL alone)
    scale: float = 1.0
    allow_partial: bool = False  # load an adapter some of whose tensors fit no module of the base model

    def __post_init__(self) -> None:
        require(self.scale >= 0, "lora.scale", f"must be >= 0, got {self.scale}")


@dataclass
class ConsistencyConfig:
    """Consistent self-attention (StoryDiffusion): frames attend to tokens of an anchor group of frames.

    See the README's "Consistent self-attention"."""

    shared_attention: bool = False  # true: frames' self-attention also sees tokens of the anchor group
    sample_rate: float = 0.5  # share of each anchor frame's tokens added to the others' keys/values
    layers: list[SharedBlock] = field(default_factory=lambda: [SharedBlock.up])  # UNet blocks that share
    step_range: list[float] = field(default_factory=lambda: [0.0, 1.0])  # [start, end) fraction of denoising steps
    group_size: int = 3  # anchor frames (the first ones), denoised together as one batch

    def __post_init__(self) -> None:
        require(0.0 <= self.sample_rate <= 1.0, "consistency.sample_rate",
                 f"must be in [0, 1], got {self.sample_rate}")
        check_choices(self, "consistency")
        require(bool(self.layers), "consistency.layers", "must name at least one UNet block")
        require(len(self.step_range) == 2 and 0.0 <= self.step_range[0] < self.step_range[1] <= 1.0,
                 "consistency.step_range",
                 f"must be [start, end] with 0 <= start < end <= 1, got {list(self.step_range)}")
        require(self.group_size >= 1, "consistency.group_size", f"must be >= 1, got {self.group_size}")


@dataclass
class InferConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    mode: Mode = Mode.simple
    lora: LoraSourceConfig = field(default_factory=LoraSourceConfig)
    story: StoryConfig = field(default_factory=lambda: StoryConfig(file="conf/story/aldar_kose.yaml"))
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        check_choices(self, "")
        if self.mode == "simple":
            require(self.lora.path is not None, "lora.path",
                     "mode=simple is SDXL + LoRA: give lora.path=<run dir>/lora")


def register_infer_configs() -> None:
    """Make the schema available to `conf/infer.yaml` as `infer_schema`."""
    ConfigStore.instance().store(name="infer_schema", node=InferConfig)


def to_infer_config(cfg: DictConfig) -> InferConfig:
    return to_schema(cfg, InferConfig, "infer_schema")
