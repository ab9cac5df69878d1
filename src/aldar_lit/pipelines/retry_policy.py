"""The technical justification's auto-fix policy: what the next attempt of a frame that failed QA is generated with.

Fixes (seed, section 5): multiple faces -> CFG 8.5 + new seed; no face -> CFG 6.5 + new seed;
invalid pose -> seed + 10; anything else -> new seed. When several apply, the first in that order wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from aldar_lit.config.infer import AutoFixConfig
from aldar_lit.quality.verdicts import INVALID_POSE, MULTIPLE_FACES, NO_FACE


@dataclass(frozen=True)
class Settings:
    """What one attempt is generated with."""

    seed: int
    guidance_scale: float


@dataclass(frozen=True)
class Fix:
    settings: Settings
    reason: str


def next_attempt(failures: list[str], current: Settings, cfg: AutoFixConfig) -> Fix:
    """The settings of the next attempt after a frame failed with `failures` (non-empty)."""
    if not failures:
        raise ValueError("next_attempt needs at least one failure")
    new_seed = current.seed + cfg.new_seed_offset
    if MULTIPLE_FACES in failures:
        return Fix(Settings(new_seed, cfg.multiple_faces_cfg),
                   f"{MULTIPLE_FACES}: CFG {cfg.multiple_faces_cfg}, new seed")
    if NO_FACE in failures:
        return Fix(Settings(new_seed, cfg.no_face_cfg), f"{NO_FACE}: CFG {cfg.no_face_cfg}, new seed")
    if INVALID_POSE in failures:
        offset = cfg.invalid_pose_seed_offset
        return Fix(Settings(current.seed + offset, current.guidance_scale), f"{INVALID_POSE}: seed+{offset}")
    return Fix(Settings(new_seed, current.guidance_scale), f"{', '.join(failures)}: new seed")
