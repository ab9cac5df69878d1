"""Typed files passed between stages, each with a version, one writer and one reader.

`AdapterCard` (`lora/adapter_card.json`): what an exported adapter was trained for, so that `infer.py lora.path=...`
needs nothing else. `RunSummary` (`summary.json` of a training run): what train.py did and what it cost.
`StoryboardManifest` (`manifest.json` beside storyboard frames, and in each training validation step): what each
frame was made with, read back by the evaluation. A reader
names the file when it is unreadable, of another version or has unknown fields; a file from before versions is read
with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, TypeVar

from aldar_lit.atomic_write import write_json

log = logging.getLogger(__name__)

ADAPTER_CARD = "adapter_card.json"
RUN_SUMMARY = "summary.json"
STORYBOARD_MANIFEST = "manifest.json"
Artifact = TypeVar("Artifact")


class ArtifactError(ValueError):
    """A file passed between stages that cannot be read as what it should be; the message names the file."""


@dataclass
class AdapterCard:
    """Written into `lora/` by the export; `None` means the exporter did not know the value."""

    rank: int  # of the exported files: twice the trained rank (and alpha) for init pissa/olora
    alpha: float
    init: str  # lora.init the adapter was trained with
    unet_targets: list[str]
    text_encoder_targets: list[str]  # empty when the text encoders were not trained
    files: dict[str, str] = field(default_factory=dict)  # format ("diffusers", "kohya") -> file name in lora/
    base_model: Optional[str] = None  # hub id or local folder of the SDXL the adapter was trained on
    trigger: Optional[str] = None
    prediction_type: Optional[str] = None  # "epsilon" | "v_prediction": the objective the UNet adapter learnt
    resolution: Optional[int] = None
    training_steps: Optional[int] = None  # the step of the exported weights
    best_score: Optional[float] = None  # its val/score, when chosen by validation
    version: int = 1


def write_adapter_card(directory: str | os.PathLike, card: AdapterCard) -> Path:
    path = Path(directory) / ADAPTER_CARD
    write_json(path, asdict(card))
    return path


def read_adapter_card(directory: str | os.PathLike) -> AdapterCard:
    return read_artifact(Path(directory) / ADAPTER_CARD, AdapterCard, "adapter card")


@dataclass
class RunSummary:
    """Written by train.py into its run directory when training completes or stops on a signal."""

    status: str = "completed"  # "completed" | "interrupted"
    base_model: Optional[str] = None
    model: Optional[str] = None
    global_step: Optional[int] = None
    train_seconds: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    peak_memory_kind: Optional[str] = None  # "cuda_max_allocated" | "process_max_rss"
    lora: dict[str, Any] = field(default_factory=dict)  # rank, alpha, unet_targets, text_encoder_targets
    trainable_params: Optional[int] = None
    checkpoint_bytes: Optional[int] = None
    adapter_bytes: dict[str, int] = field(default_factory=dict)  # format -> bytes of the exported file
    final_metrics: dict[str, float] = field(default_factory=dict)
    metrics_csv: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    resumed_from: Optional[dict[str, Any]] = None  # checkpoint and its step, when the run resumed
    best_checkpoint: Optional[str] = None  # with validation: the checkpoint the adapter was exported from
    best_step: Optional[int] = None
    best_score: Optional[float] = None
    score_weights: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # step and scores (score_se too) of every validation
    # the parts with random weights (config.train.random_weight_parts); empty: none; None: unknown (an older summary)
    random_weights: Optional[list[str]] = None
    interrupted_by: Optional[str] = None  # status interrupted: the signal, the checkpoint and how to resume
    resume_checkpoint: Optional[str] = None
    resume_command: Optional[str] = None
    wandb: Optional[dict[str, str]] = None  # project, run_id, run_dir, artifact
    version: int = 1


def write_run_summary(directory: str | os.PathLike, summary: RunSummary) -> Path:
    path = Path(directory) / RUN_SUMMARY
    write_json(path, asdict(summary))
    return path


def read_run_summary(directory: str | os.PathLike) -> RunSummary:
    return read_artifact(Path(directory) / RUN_SUMMARY, RunSummary, "run summary")


@dataclass
class StoryboardManifest:
    """Written by infer.py (rewritten after every frame) and by each training validation step, beside the frames."""

    status: str  # "running" | "complete" | "failed" | "interrupted"
    mode: str  # "baseline" | "simple" | "ref_guided" | "validation"
    # per frame: index, file, prompt, seed, attempts (each numbered from 1, with its QA), chosen_attempt (from 1), ...
    frames: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    base_model: Optional[str] = None
    lora: dict[str, Any] = field(default_factory=dict)  # path, scale, the tensors applied
    story: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    qa: dict[str, Any] = field(default_factory=dict)
    consistency: dict[str, Any] = field(default_factory=dict)  # shared-attention settings
    timings: dict[str, float] = field(default_factory=dict)
    precision: Optional[dict[str, Any]] = None
    scheduler: Optional[dict[str, Any]] = None
    identity_reference: Optional[dict[str, Any]] = None
    error: Optional[str] = None  # status failed or interrupted: why
    step: Optional[int] = None  # mode validation: the training step and its scores
    metrics: Optional[dict[str, float]] = None
    version: int = 1


def write_storyboard_manifest(directory: str | os.PathLike, manifest: StoryboardManifest) -> Path:
    path = Path(directory) / STORYBOARD_MANIFEST
    write_json(path, asdict(manifest))
    return path


def read_storyboard_manifest(directory: str | os.PathLike) -> StoryboardManifest:
    return read_artifact(Path(directory) / STORYBOARD_MANIFEST, StoryboardManifest, "storyboard manifest")


def read_artifact(path: Path, kind: type[Artifact], what: str) -> Artifact:
    """The `kind` dataclass stored at `path`; ArtifactError naming the file unless it is one of this version."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}: cannot read the {what} ({err})") from err
    if not isinstance(payload, dict):
        raise ArtifactError(f"{path}: not a {what} (a JSON object expected)")
    version = kind.__dataclass_fields__["version"].default
    if "version" not in payload:
        log.warning("%s: a %s without a version (written before versions); read as version %d", path, what, version)
        payload = {**payload, "version": version}
    if payload["version"] != version:
        raise ArtifactError(f"{path}: {what} version {payload['version']!r}; this aldar_lit reads version {version}")
    unknown = set(payload) - {f.name for f in fields(kind)}
    if unknown:
        raise ArtifactError(f"{path}: not a {what} of version {version}: unknown fields {sorted(unknown)}")
    try:
        return kind(**payload)
    except TypeError as err:
        raise ArtifactError(f"{path}: not a {what} of version {version}: {err}") from err
