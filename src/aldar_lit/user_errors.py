"""Mistakes in a command, its config or its input files end a tool with one clear message, not a traceback.

Each entry point runs its job inside `reported_briefly()`. The project's own error types (a bad key, a missing
file, a broken adapter) are re-raised as a `UserError`, a Hydra `CompactHydraException`: Hydra then prints only
the message and exits with status 1, a multirun marks that job failed and stops with the same message, and
`HYDRA_FULL_ERROR=1` still shows the whole traceback. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """A project error that is the user's to fix; Hydra prints its message alone."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Imported on the error path only, so that a tool's --help and config checks stay quick."""
    from aldar_lit.atomic_write import WriteError
    from aldar_lit.config import ConfigError
    from aldar_lit.images import DataError
    from aldar_lit.evaluation.generation import ManifestError
    from aldar_lit.pipelines.generator import AdapterError
    from aldar_lit.pipelines.poses import PoseError
    from aldar_lit.pipelines.story import StoryError
    from aldar_lit.quality.face_identity import FaceModelUnavailable
    from aldar_lit.training.selection import CheckpointError

    return (ConfigError, DataError, CheckpointError, StoryError, PoseError, AdapterError, ManifestError, WriteError,
            FaceModelUnavailable)


@contextmanager
def reported_briefly() -> Iterator[None]:
    try:
        yield
    except Exception as err:
        if isinstance(err, user_error_types()):
            raise UserError(f"error: {err}") from err
        raise
