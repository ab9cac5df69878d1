"""Known-harmless log lines that read like failures, dropped from the tools' console and log file.

Each entry names the logger and the exact message, so a real warning from the same library still shows. The
filter is attached to Hydra's job_logging handlers (conf/hydra/default.yaml).
"""

from __future__ import annotations

import logging
import re

KNOWN_HARMLESS = [  # (logger name, message)
    # bitsandbytes' optional CPU 4-bit kernel from the HF kernels hub; we never run 4-bit matmuls on the CPU
    (re.compile(r"^bitsandbytes\.backends\.cpu\.ops$"),
     re.compile(r"^Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'")),
    # Lightning's adverts for its cloud products (litlogger, litmodels); its rank-zero logger's name depends on
    # which of its packages was imported last
    (re.compile(r"^lightning(_fabric|\.fabric|\.pytorch)\.utilities\.rank_zero$"),
     re.compile(r"^💡 Tip: For seamless cloud ")),
]


class DropKnownHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(name.search(record.name) and message.search(record.getMessage())
                       for name, message in KNOWN_HARMLESS)


def lightning_logs_through_hydra() -> None:
    """`import lightning` gives the `lightning` logger a console handler of its own ("INFO: ..." on stderr): under
    Hydra every Lightning line showed twice, the copy past the filter above. Its records still reach Hydra's
    handlers through the root logger, so that copy goes (when a root handler is configured, i.e. in a job)."""
    if logging.getLogger().handlers:
        lightning = logging.getLogger("lightning")
        for handler in list(lightning.handlers):
            lightning.removeHandler(handler)
