"""Typed configs of the dataset-preparation tools: `python -m aldar_lit.caption` and `python -m aldar_lit.curate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

from hydra.core.config_store import ConfigStore

from aldar_lit.config.core import check_choices, require
from aldar_lit.config.shared import TRIGGER, ImageDetail


class LinkMode(StrEnum):
    """How curation writes the kept set."""

    copy = "copy"
    hardlink = "hardlink"
    symlink = "symlink"


@dataclass
class CaptionConfig:
    """GPT-4o-class vision captions for a folder of images, written as sidecar `.txt` files."""

    input_dir: str = "???"
    trigger: str = TRIGGER
    vision_model: str = "gpt-4o"  # not `model`: that name is the training config's model group
    base_url: Optional[str] = None  # an OpenAI-compatible server; None: api.openai.com (key: env OPENAI_API_KEY)
    prompt: str = "???"  # the template lives in conf/caption.yaml; `{trigger}` is filled in
    image_detail: ImageDetail = ImageDetail.low
    max_image_side: int = 1024  # images are downscaled to this before upload
    max_tokens: int = 200  # a reply cut off here (finish_reason "length") is a failure, not a caption
    max_caption_chars: int = 1000  # longer replies, empty ones and refusals are failures: nothing written or cached
    temperature: float = 0.2
    concurrency: int = 4  # requests in flight at once
    max_retries: int = 5  # the openai client's own retries with exponential backoff (429, 5xx, timeouts)
    timeout_s: float = 60.0
    overwrite: bool = False  # false: an existing caption (perhaps hand-edited) is never replaced
    dry_run: bool = False  # list what would be captioned and the estimated cost; no API calls
    cache_dir: str = "~/.cache/aldar_lit/captions"
    report_path: Optional[str] = None  # None: <input_dir>/caption_report.json
    usd_per_million_input_tokens: float = 2.50  # gpt-4o list prices; set these for other models
    usd_per_million_output_tokens: float = 10.00
    expected_output_tokens: int = 90  # per caption, for the dry-run estimate

    def __post_init__(self) -> None:
        check_choices(self, "")
        require(bool(self.vision_model), "vision_model", "must name a model")
        require("{trigger}" in self.prompt, "prompt", "must contain {trigger}")
        require(self.max_image_side >= 64, "max_image_side", f"must be >= 64, got {self.max_image_side}")
        require(self.max_tokens > 0, "max_tokens", f"must be positive, got {self.max_tokens}")
        require(self.max_caption_chars > 0, "max_caption_chars", f"must be positive, got {self.max_caption_chars}")
        require(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")
        require(self.max_retries >= 0, "max_retries", f"must be >= 0, got {self.max_retries}")
        require(self.timeout_s > 0, "timeout_s", f"must be positive, got {self.timeout_s}")
        require(self.usd_per_million_input_tokens >= 0 and self.usd_per_million_output_tokens >= 0,
                 "usd_per_million_*_tokens", "prices must be >= 0")


@dataclass
class CurateConfig:
    """Filters a folder of raw renders into a kept set, with a report of every dropped file."""

    input_dir: str = "???"
    output_dir: str = "???"
    min_side: int = 512  # drop images whose shorter side is smaller
    blur_threshold: float = 30.0  # drop images whose variance of Laplacian (grey levels²) is lower
    analysis_side: int = 512  # larger images are downscaled to this longer side before blur is measured
    near_duplicate_distance: int = 6  # drop an image whose 64-bit pHash is within this many bits of a kept one
    require_face: bool = False  # drop images where OpenCV's frontal-face Haar cascade (misses profiles) finds no face
    link: LinkMode = LinkMode.copy
    contact_sheet_thumb: int = 160
    contact_sheet_columns: int = 8
    # The technical justification's 70-image split, as the reference for the view/pose balance report.
    balance_reference: dict[str, int] = field(
        default_factory=lambda: {"front": 25, "side": 20, "action": 15, "misc": 10})
    # Caption words that put an image in a category; checked in this order, the first match wins.
    balance_keywords: dict[str, list[str]] = field(default_factory=lambda: {
        "action": ["walking", "running", "riding", "jumping", "dancing", "waving", "pointing", "fighting",
                   "arms raised", "leaping", "throwing", "action"],
        "side": ["side view", "profile"],
        "front": ["front view", "facing the viewer", "facing forward", "facing the camera"],
    })
    max_image_pixels: int = 89_478_485

    def __post_init__(self) -> None:
        check_choices(self, "")
        require(self.min_side >= 1, "min_side", f"must be >= 1, got {self.min_side}")
        require(self.blur_threshold >= 0, "blur_threshold", f"must be >= 0, got {self.blur_threshold}")
        require(self.analysis_side >= 32, "analysis_side", f"must be >= 32, got {self.analysis_side}")
        require(0 <= self.near_duplicate_distance <= 64, "near_duplicate_distance",
                 f"must be in [0, 64], got {self.near_duplicate_distance}")
        require(self.contact_sheet_thumb >= 16 and self.contact_sheet_columns >= 1, "contact_sheet_*",
                 "thumb must be >= 16 px and columns >= 1")
        require("misc" in self.balance_reference, "balance_reference", "must have a `misc` entry")
        unknown = set(self.balance_keywords) - set(self.balance_reference)
        require(not unknown, "balance_keywords", f"categories {sorted(unknown)} are not in balance_reference")


def register_prep_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="caption_schema", node=CaptionConfig)
    store.store(name="curate_schema", node=CurateConfig)

