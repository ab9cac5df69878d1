"""Typed files passed between stages. `AdapterCard`: what an exported `lora/` folder was trained for,
so that `infer.py lora.path=...` needs nothing else."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from aldar_lit.atomic_write import write_json

ADAPTER_CARD = "adapter_card.json"


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
    """The card in `directory`; ValueError naming the file if it is unreadable or of another version."""
    path = Path(directory) / ADAPTER_CARD
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the adapter card ({err})") from err
    known = {f.name for f in fields(AdapterCard)}
    if not isinstance(payload, dict) or payload.get("version") != AdapterCard.version or not known.issuperset(payload):
        raise ValueError(f"{path}: not an adapter card of version {AdapterCard.version} with fields {sorted(known)}")
    try:
        return AdapterCard(**payload)
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from err
