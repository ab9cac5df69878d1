"""The tools' entry points: the console scripts aldar-train, aldar-infer, aldar-evaluate, aldar-caption and
aldar-curate (pyproject [project.scripts]). The top-level train.py, infer.py, evaluate.py and `python -m
aldar_lit.caption` / `aldar_lit.curate` call the same functions.

The config tree is the package aldar_lit.conf (pyproject maps it to the checkout's conf/), found through Hydra's
pkg:// search path, so an installed tool runs from any directory. Each tool's config names its Hydra job
(hydra.job.name: outputs/train/..., its log file), whichever way it was started.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from aldar_lit.config import register_configs
from aldar_lit.config.evaluate import register_evaluate_configs
from aldar_lit.config.infer import register_infer_configs
from aldar_lit.config.prep import register_prep_configs
from aldar_lit.redaction import refuse_secret_overrides
from aldar_lit.user_errors import reported_briefly

CONFIG_PATH = "pkg://aldar_lit.conf"


def launch(config_name: str, register: Callable[[], None], key_env_var: str | None,
           job: Callable[[DictConfig], Any]) -> None:
    """Run `job` as a Hydra app on conf/<config_name>.yaml: a key on the command line is refused before Hydra
    writes .hydra/, and the project's own errors end the tool with their message alone."""
    refuse_secret_overrides(sys.argv[1:], key_env_var)
    register()

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
    def main(cfg: DictConfig) -> Any:
        with reported_briefly():
            return job(cfg)  # train's val/score reaches a sweeper (Optuna) through Hydra's job return

    main()


# The jobs import their heavy modules (torch, openai) inside: --help and --cfg stay quick.

def train_job(cfg: DictConfig) -> float:
    from aldar_lit.training.run import run

    return run(cfg)


def infer_job(cfg: DictConfig) -> float:
    from aldar_lit.pipelines.storyboard import run

    return run(cfg)


def evaluate_job(cfg: DictConfig) -> None:
    from aldar_lit.evaluation.run import run

    run(cfg)


def caption_job(cfg: DictConfig) -> None:
    from aldar_lit.data.captioning import run_captioning

    report = run_captioning(cfg)
    if report.failures:  # a scheduler or a `&&` chain must not take a partly captioned folder for a finished one
        raise SystemExit(f"error: {len(report.failures)} of {report.images} images failed; the report lists each "
                         "and why")


def curate_job(cfg: DictConfig) -> None:
    from aldar_lit.data.curation import run_curation

    run_curation(cfg)


def train() -> None:
    """aldar-train: train a character LoRA on SDXL.  aldar-train experiment=quickstart"""
    launch("train", register_configs, "WANDB_API_KEY", train_job)


def infer() -> None:
    """aldar-infer: turn a story into a storyboard with a trained LoRA.  aldar-infer lora.path=<run>/lora"""
    launch("infer", register_infer_configs, "OPENAI_API_KEY", infer_job)


def evaluate() -> None:
    """aldar-evaluate: compare baseline / simple / ref_guided storyboards with identity metrics and bootstrap CIs."""
    launch("evaluate", register_evaluate_configs, "WANDB_API_KEY", evaluate_job)


def caption() -> None:
    """aldar-caption: caption a folder of images with a vision LLM (OPENAI_API_KEY from the environment only)."""
    launch("caption", register_prep_configs, "OPENAI_API_KEY", caption_job)


def curate() -> None:
    """aldar-curate: filter raw renders into a training set."""
    launch("curate", register_prep_configs, None, curate_job)
