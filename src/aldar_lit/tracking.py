"""W&B conventions shared by train.py and evaluate.py: readable run names, the adapter artifact and its lineage.

A training run logs its exported `lora/` as the artifact `lora-<run id>` (metadata: the adapter card) and records
that name in summary.json; an evaluation of that `lora/` names the artifact as its input, so the dashboard links
each evaluation to the training run that produced the adapter.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aldar_lit.artifacts import RUN_SUMMARY, read_adapter_card, read_run_summary

log = logging.getLogger(__name__)
ADAPTER_ARTIFACT_TYPE = "lora"


class WandbRunName(Callback):
    """Hydra callback: each job's W&B run is named by its command-line overrides (W&B reads WANDB_NAME), unless
    the user set WANDB_NAME; the group (one per sweep) is set by `SweepSummaryCallback`."""

    def __init__(self) -> None:
        self.named = False

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "WANDB_NAME" not in os.environ or self.named:
            os.environ["WANDB_NAME"] = run_name(config.hydra.job.name, list(config.hydra.overrides.task))
            self.named = True


def run_name(job: str, overrides: list[str]) -> str:
    """`train experiment=quickstart lora.rank=4`: the tool, then its overrides (paths cut to their last two parts)."""
    def short(override: str) -> str:
        key, _, value = override.partition("=")
        return f"{key}={'/'.join(Path(value).parts[-2:])}" if "/" in value else override

    return " ".join([job, *map(short, overrides)])


def offline_sync_line(sync_dir: str) -> str:
    """A closing-summary line for an offline run: where it is and how to upload it (W&B's own hint is off the console,
    WANDB_SHOW_INFO in conf/hydra/default.yaml)."""
    return f"  W&B run (offline): {sync_dir}; upload it with: wandb sync {shlex.quote(sync_dir)}"


def adapter_artifact_name(run_id: str) -> str:
    return f"lora-{run_id}"


def log_adapter_artifact(run: Any, lora_dir: Path, summary: dict[str, Any]) -> None:
    """`lora_dir` as the run's output artifact; its metadata: the adapter card, and the selected step's score."""
    import wandb  # only with W&B: the import is slow

    metadata = {**asdict(read_adapter_card(lora_dir)),
                **{k: summary[k] for k in ("global_step", "best_step", "best_score") if k in summary}}
    artifact = wandb.Artifact(adapter_artifact_name(run.id), type=ADAPTER_ARTIFACT_TYPE, metadata=metadata)
    artifact.add_dir(str(lora_dir))
    run.log_artifact(artifact)
    run.summary.update({k: v for k, v in summary.items() if k in ("global_step", "best_step", "best_score")})


def trained_adapter_artifact(lora_dir: str | os.PathLike) -> str | None:
    """The artifact name the training run of `lora_dir` logged (its summary.json, next to `lora/`), if any."""
    run_dir = Path(lora_dir).expanduser().parent
    if not (run_dir / RUN_SUMMARY).is_file():
        return None
    return (read_run_summary(run_dir).wandb or {}).get("artifact")


def use_adapter_artifact(run: Any, artifact: str) -> None:
    """Name the training run's adapter artifact as this run's input. W&B records artifact use online only
    (`Run.use_artifact` refuses offline runs), so an offline run keeps the name in its summary for the reader."""
    run.summary["lora_artifact"] = artifact
    if run.offline:
        log.warning("W&B is offline: the link to the adapter artifact %s is kept as lora_artifact in the run's "
                    "config and summary; for the lineage graph, `wandb sync` the training run, then evaluate with "
                    "wandb.offline=false", artifact)
        return
    run.use_artifact(f"{artifact}:latest", type=ADAPTER_ARTIFACT_TYPE)
