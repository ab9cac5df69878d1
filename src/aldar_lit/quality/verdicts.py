"""Frame verdicts as pure functions of QA results: the failure codes, the face-box failures, the attempt ranking.

Failures: no_face, multiple_faces, invalid_pose, too_small, cut_off, low_prompt_score, low_identity.
What to retry with is the storyboard's business (`aldar_lit.pipelines.retry_policy`).
"""

from __future__ import annotations

from aldar_lit.quality.faces import FaceBox

NO_FACE, MULTIPLE_FACES, INVALID_POSE = "no_face", "multiple_faces", "invalid_pose"
TOO_SMALL, CUT_OFF = "too_small", "cut_off"
LOW_PROMPT_SCORE, LOW_IDENTITY = "low_prompt_score", "low_identity"


def face_failures(num_faces: int, largest_box: FaceBox | None, width: int, height: int,
                  min_face_fraction: float) -> list[str]:
    """Anomalies visible from the face boxes alone: none/several faces, a face too small or at the border."""
    if num_faces == 0:
        return [NO_FACE]
    failures = [MULTIPLE_FACES] if num_faces > 1 else []
    if largest_box is not None:
        x, y, w, h = largest_box.x, largest_box.y, largest_box.w, largest_box.h
        if h < min_face_fraction * height:
            failures.append(TOO_SMALL)
        if x <= 0 or y <= 0 or x + w >= width or y + h >= height:
            failures.append(CUT_OFF)
    return failures


def rank_key(passed: bool, failures: list[str], prompt_score: float | None, identity: float | None) -> tuple:
    """Sort key of an attempt, higher is better: passing first, then fewer failures, then scores."""
    return (passed, -len(failures), identity if identity is not None else -2.0,
            prompt_score if prompt_score is not None else -2.0)
