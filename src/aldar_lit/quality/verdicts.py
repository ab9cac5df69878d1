"""Frame verdicts and the seed's auto-fix policy, as pure functions of QA results.

Failures: no_face, multiple_faces, invalid_pose, too_small, cut_off, low_prompt_score, low_identity.
Fixes (seed, section 5): multiple faces -> CFG 8.5 + new seed; no face -> CFG 6.5 + new seed;
invalid pose -> seed + 10; anything else -> new seed. When several apply, the first in that order wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from aldar_lit.pipelines.config import AutoFixConfig

NO_FACE, MULTIPLE_FACES, INVALID_POSE = "no_face", "multiple_faces", "invalid_pose"
TOO_SMALL, CUT_OFF = "too_small", "cut_off"
LOW_PROMPT_SCORE, LOW_IDENTITY = "low_prompt_score", "low_identity"


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


def face_failures(num_faces: int, largest_box: tuple[int, int, int, int] | None, width: int, height: int,
                  min_face_fraction: float) -> list[str]:
    """Anomalies visible from the face boxes alone: none/several faces, a face too small or at the border."""
    if num_faces == 0:
        return [NO_FACE]
    failures = [MULTIPLE_FACES] if num_faces > 1 else []
    if largest_box is not None:
        x, y, w, h = largest_box
        if h < min_face_fraction * height:
            failures.append(TOO_SMALL)
        if x <= 0 or y <= 0 or x + w >= width or y + h >= height:
            failures.append(CUT_OFF)
    return failures


def rank_key(passed: bool, failures: list[str], prompt_score: float | None, identity: float | None) -> tuple:
    """Sort key of an attempt, higher is better: passing first, then fewer failures, then scores."""
    return (passed, -len(failures), identity if identity is not None else -2.0,
            prompt_score if prompt_score is not None else -2.0)
