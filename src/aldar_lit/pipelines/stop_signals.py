"""Stop signals as an exception: SIGTERM (SLURM, `timeout`, `docker stop`) and SIGINT (Ctrl-C) raise
`Interrupted` in the main thread, so that a job can record what it has done before it exits."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Optional

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A stop signal. A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # the shell's convention for a process stopped by a signal
        super().__init__(self.signal_name)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the first stop signal raises `Interrupted`; later ones, which would cut short the
    recording of the first, are logged and ignored. The previous handlers are restored on the way out."""

    def still_recording(signum: int, frame: Optional[FrameType]) -> None:
        log.warning("%s: still recording what was done before the first stop signal", signal.Signals(signum).name)

    def interrupt(signum: int, frame: Optional[FrameType]) -> None:
        for stop in STOP_SIGNALS:
            signal.signal(stop, still_recording)
        raise Interrupted(signum)

    previous = {stop: signal.signal(stop, interrupt) for stop in STOP_SIGNALS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
