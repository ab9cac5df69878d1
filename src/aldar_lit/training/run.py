"""`train.py`'s body: config -> data -> SDXLLoRAModule -> Lightning fit -> exported adapter + summary.

With `validation.enabled`, a `ValidationSampler` scores samples into `val/score`, a `ModelCheckpoint`
keeps the top-k by it, and the best checkpoint (not the last step) is what lands in `lora/`.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, get_method, instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from aldar_lit.artifacts import RunSummary, write_run_summary
from aldar_lit.config import ConfigError, TrainConfig, to_train_config
from aldar_lit.config.train import random_weight_parts
from aldar_lit.console_noise import lightning_logs_through_hydra
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.models.export import export_lora
from aldar_lit.models.loading import resolve_pretrained
from aldar_lit.quality.references import select_references
from aldar_lit.quality.subject_score import build_scorer
from aldar_lit.redaction import REDACTED, is_secret_key
from aldar_lit.tool_command import tool_command
from aldar_lit.tracking import adapter_artifact_name, log_adapter_artifact, offline_sync_line
from aldar_lit.training.checkpoint_io import AtomicCheckpointIO
from aldar_lit.training.interruption import InterruptCheckpoint, ResumeRecord, interrupted_summary
from aldar_lit.training.module import SDXLLoRAModule
from aldar_lit.training.progress import StepProgressBar
from aldar_lit.training.selection import (
    CheckpointError, StepCheckpoint, best_score_checkpoint, check_lora_fits, load_checkpoint_weights, read_checkpoint,
)
from aldar_lit.training.validation import SCORE_KEY, ValidationSampler

log = logging.getLogger(__name__)


def check_factories(config: TrainConfig) -> None:
    """Import every `_target_` now, so a typo fails before any model is loaded."""
    for key, node in (("optim.optimizer", config.optim.optimizer), ("optim.scheduler", config.optim.scheduler),
                      ("trainer", config.trainer), *((f"logger.{k}", v) for k, v in config.logger.items())):
        try:
            (get_method if node.get("_partial_") else get_class)(node["_target_"])
        except Exception as err:
            raise ConfigError(f"{key}._target_: cannot import {node.get('_target_')!r} ({err})") from err


@dataclass
class Selection:
    """The validation sampler and the `val/score` checkpoint callback of a run with validation."""

    sampler: ValidationSampler
    best: ModelCheckpoint


def reference_images(datamodule: CaptionedImageDataModule, limit: int) -> list[Image.Image]:
    """The CLIP-I / DINO references: the training images, selected as evaluate.py selects them from a folder."""
    return select_references([example.path for example in datamodule.scan_report.examples], limit)


def build_selection(config: TrainConfig, output_dir: Path, datamodule: CaptionedImageDataModule) -> Selection:
    validation = config.validation
    max_steps = config.trainer.get("max_steps", -1)
    if max_steps is not None and 0 < max_steps < validation.every_n_steps:
        raise ConfigError(f"validation.every_n_steps: {validation.every_n_steps} is beyond trainer.max_steps="
                          f"{max_steps}, so no checkpoint would ever be scored; lower it or use callbacks=none")
    references = reference_images(datamodule, validation.max_reference_images)
    sampler = ValidationSampler(
        prompts=config.data.validation_prompts,
        seeds=validation.seeds,
        every_n_steps=validation.every_n_steps,
        scorer_factory=partial(build_scorer, config.scorer, references),
        output_dir=output_dir,
        num_inference_steps=validation.num_inference_steps,
        guidance_scale=validation.guidance_scale,
        resolution=validation.resolution or config.data.resolution,
    )
    best = best_score_checkpoint(output_dir / "checkpoints", validation.every_n_steps, validation.top_k)
    return Selection(sampler, best)


def build_trainer(config: TrainConfig, output_dir: Path, extra_callbacks: list[Callback]) -> L.Trainer:
    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        filename="step-{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint.every_n_train_steps,
        save_top_k=-1,
        save_last=config.checkpoint.save_last,
        save_weights_only=False,
    )
    callbacks: list[Callback] = [*extra_callbacks, checkpoint]
    if config.checkpoint.at_steps:
        callbacks.append(StepCheckpoint(config.checkpoint.at_steps, output_dir / "checkpoints",
                                        config.checkpoint.every_n_train_steps))
    loggers = [instantiate(spec, **csv_version(spec)) for spec in config.logger.values()]
    if loggers:  # lr-<optimizer>/<unet|text_encoder|text_encoder_2>: one curve per parameter group
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if config.trainer.get("enable_progress_bar", True):
        # not Rich's bar, which reads the metrics back from the GPU after every step whatever its refresh rate
        callbacks.append(StepProgressBar(refresh_rate=config.progress_every_n_steps))
    return instantiate(config.trainer, callbacks=callbacks, logger=loggers or False, default_root_dir=output_dir,
                       plugins=[AtomicCheckpointIO()])


def csv_version(spec: dict[str, Any]) -> dict[str, Any]:
    """For a CSV logger whose file exists already (a run resumed in its own directory): Lightning's next
    `version_N` beside it, since Lightning would delete the earlier metrics otherwise."""
    if get_class(spec["_target_"]) is not CSVLogger:
        return {}
    version = spec.get("version")
    existing = Path(spec["save_dir"], spec.get("name", "lightning_logs"), "" if version is None else str(version))
    return {"version": None} if version is not None and (existing / "metrics.csv").exists() else {}


def check_resume_checkpoint(config: TrainConfig) -> None:
    """Read `ckpt_path` safely and check that its LoRA fits this config, before any model is loaded."""
    try:
        check_lora_fits(read_checkpoint(config.ckpt_path), config.lora, config.ckpt_path)
    except CheckpointError as err:
        raise ConfigError(f"ckpt_path: {err}") from err


def loggable_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config for experiment trackers, with any secret-looking key's value withheld."""

    def redact(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: REDACTED if is_secret_key(str(k)) else redact(v) for k, v in node.items()}
        if isinstance(node, list):
            return [redact(v) for v in node]
        return node

    return redact(OmegaConf.to_container(cfg, resolve=True))


def export_selected(module: SDXLLoRAModule, config: TrainConfig, selection: Selection | None,
                    output_dir: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Export the best `val/score` checkpoint's adapter (or, without validation, the final weights)."""
    report: dict[str, Any] = {}
    step = module.global_step
    if selection is not None:
        best_path = selection.best.best_model_path
        if not best_path:
            raise ConfigError(f"validation.every_n_steps: no evaluation ran in {module.global_step} steps "
                              f"(every {config.validation.every_n_steps}); lower it or raise trainer.max_steps")
        report = {
            "best_checkpoint": best_path,
            "best_step": load_checkpoint_weights(module, best_path),
            "best_score": float(selection.best.best_model_score),
            "score_weights": dict(config.scorer.weights),
            "history": selection.sampler.history,
        }
        log.info("best checkpoint %s (step %d, val/score %.4f)", best_path, report["best_step"], report["best_score"])
        step = report["best_step"]
    files = export_lora(module.trained_modules(), config.lora, output_dir / "lora",
                        base_model=resolve_pretrained(module.model_cfg), trigger=config.data.trigger,
                        prediction_type=module.noise_scheduler.config.prediction_type,
                        resolution=config.data.resolution, training_steps=step, best_score=report.get("best_score"))
    return files, report


def wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)


def peak_memory() -> tuple[int, str]:
    """Peak CUDA memory allocated by torch on GPU; peak resident set size of the process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_max_rss"


def run(cfg: DictConfig) -> float:
    """Train, export `lora/`, write `summary.json`; return `optimized_metric` for Hydra sweepers."""
    lightning_logs_through_hydra()
    config = to_train_config(cfg)
    check_factories(config)
    output_dir = Path(config.paths.output_dir)
    if config.ckpt_path:
        check_resume_checkpoint(config)
    L.seed_everything(config.seed, workers=True)

    datamodule = CaptionedImageDataModule(config.data, seed=config.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")  # validates every image and caption before a model is loaded
    module = SDXLLoRAModule(config.model, config.lora, config.optim, config.objective, seed=config.seed)
    selection = build_selection(config, output_dir, datamodule) if config.validation.enabled else None
    interruption, resume = InterruptCheckpoint(output_dir / "checkpoints"), ResumeRecord()
    run_callbacks = [interruption, resume]
    trainer = build_trainer(config, output_dir, [selection.sampler, selection.best, *run_callbacks] if selection
                            else run_callbacks)
    for logger in trainer.loggers:
        logger.log_hyperparams(loggable_config(cfg))

    started = time.perf_counter()
    try:
        with out_of_memory_advice(config):
            # weights_only: a checkpoint never runs code, whatever Lightning's default for its source
            trainer.fit(module, datamodule=datamodule, ckpt_path=config.ckpt_path, weights_only=True)
    except SIGTERMException as stop:  # SIGTERM or Ctrl-C: `interruption` saved a checkpoint at the step's end
        if trainer.is_global_zero:
            summary = {**make_summary(config, module, trainer, time.perf_counter() - started, {}),
                       "resumed_from": resume.resumed_from, **interrupted_summary(interruption, output_dir)}
            write_run_summary(output_dir, RunSummary(**summary))
            log.warning("training stopped by %s after step %d; resume with:\n  %s", summary["interrupted_by"],
                        summary["global_step"], summary["resume_command"])
        raise SystemExit(interruption.exit_code) from stop
    train_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return float("nan")  # rank 0 exports, reports and answers the sweeper

    adapter_files, selected = export_selected(module, config, selection, output_dir)
    summary = {**make_summary(config, module, trainer, train_seconds, adapter_files),
               "resumed_from": resume.resumed_from, **selected}
    tracker = wandb_logger(trainer)
    if tracker is not None:  # what evaluate.py names as its input (aldar_lit.tracking)
        run_id = tracker.experiment.id
        summary["wandb"] = {"project": tracker.experiment.project, "run_id": run_id, "run_dir": tracker.experiment.dir,
                            "artifact": adapter_artifact_name(run_id)}
    write_run_summary(output_dir, RunSummary(**summary))
    sync_dir = None  # an offline W&B run: its folder, for `wandb sync`
    if tracker is not None:
        log_adapter_artifact(tracker.experiment, output_dir / "lora", summary)
        sync_dir = tracker.experiment.sync_dir if tracker.experiment.offline else None
        tracker.experiment.finish()  # a sweep runs its jobs in one process: the next job starts a new run
    log.info(closing_summary(config, output_dir, summary, sync_dir))  # last, below W&B's own closing lines
    if config.optimized_metric == SCORE_KEY:
        return summary["best_score"]
    metric = trainer.callback_metrics.get(config.optimized_metric)
    if metric is None:
        raise ConfigError(f"optimized_metric: {config.optimized_metric!r} was never logged; "
                          f"logged metrics: {sorted(trainer.callback_metrics)}")
    return float(metric)


def closing_summary(config: TrainConfig, output_dir: Path, summary: dict[str, Any],
                    wandb_sync_dir: str | None = None) -> str:
    """The run's last lines: where its outputs are, its best score, how to upload an offline W&B run, and the command
    that makes a storyboard."""
    lora = output_dir / "lora"
    lines = [f"training finished at step {summary['global_step']}",
             f"  adapter:           {lora}",
             f"  summary:           {output_dir / 'summary.json'}"]
    if (output_dir / "validation").is_dir():
        lines.append(f"  validation images: {output_dir / 'validation'}")
    if summary.get("best_score") is not None:
        lines.append(f"  best val/score:    {summary['best_score']:.4f} at step {summary['best_step']}")
    if wandb_sync_dir is not None:
        lines.append(offline_sync_line(wandb_sync_dir))
    infer = shlex.join([*tool_command("infer"), f"model={config.model.name}", f"lora.path={lora}"])
    if config.model.random_init is not None:  # a random-weight model: the offline, CPU-sized storyboard
        infer += " adapters=tiny qa=tiny generation.width=64 generation.height=64 generation.steps=4"
    return "\n".join(lines + ["next, a storyboard with this adapter:", f"  {infer}"])


def memory_advice(config: TrainConfig) -> list[str]:
    """Overrides that lower training memory, among those this run does not use yet, largest effect first.

    The figures are the peak of the technical justification's recipe on one H200 (unless they say otherwise),
    39.4 GiB as it stands (`benchmarks/results/train_step_sdxl_arch_h200.json`).
    """
    advice = []
    if not config.model.gradient_checkpointing:
        advice.append("model.gradient_checkpointing=true (recompute activations in the backward pass; "
                      "SDXL recipe: 16.6 GiB, 36% slower)")
    if config.model.activation_memory_budget is None:
        compile_unet = "" if config.model.compile_unet else "model.compile_unet=inductor "
        advice.append(f"{compile_unet}model.activation_memory_budget=0.5 (the compiler recomputes the cheapest "
                      "activations instead of keeping them; SDXL architecture, measured on a CPU: 65% less kept "
                      "for the backward pass; GPU peak and speed not measured yet)")
    if config.data.batch_size > 1:
        advice.append(f"data.batch_size={config.data.batch_size // 2} +trainer.accumulate_grad_batches=2 "
                      "(the same effective batch; activations scale with the batch)")
    if config.lora.train_text_encoders:
        advice.append("lora.train_text_encoders=false (no text-encoder activations kept; SDXL recipe: -1.7 GiB)")
    if "8bit" not in config.optim.optimizer["_target_"]:
        advice.append("optim=adamw8bit (optimizer state in 8 bits; SDXL recipe: -0.6 GiB)")
    if not config.data.cache_latents:
        advice.append("data.cache_latents=true (no VAE encoder in the step; it sets the peak once activations are "
                      "checkpointed: with checkpointing and 8-bit AdamW, 11.0 GiB)")
    if config.model.dtype == "float32":
        advice.append("model.dtype=bfloat16 (frozen weights in half the memory)")
    return advice


@contextlib.contextmanager
def out_of_memory_advice(config: TrainConfig) -> Iterator[None]:
    """Re-raise an out-of-memory error with the settings that would fit, instead of a bare CUDA message."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        advice = memory_advice(config) or ["a smaller data.resolution or lora.rank"]
        raise torch.OutOfMemoryError(
            f"{err}\nTraining ran out of memory. Settings that lower it (each is a command-line override):\n  "
            + "\n  ".join(advice)
        ) from err


def make_summary(config: TrainConfig, module: SDXLLoRAModule, trainer: L.Trainer, train_seconds: float,
                 adapter_files: dict[str, Path]) -> dict[str, Any]:
    checkpoints = sorted((Path(config.paths.output_dir) / "checkpoints").glob("*.ckpt"))
    memory, memory_kind = peak_memory()
    return {
        "status": "completed",
        "metrics_csv": [logger.experiment.metrics_file_path for logger in trainer.loggers
                        if isinstance(logger, CSVLogger)],
        "base_model": resolve_pretrained(config.model),
        "model": config.model.name,
        "global_step": trainer.global_step,
        "train_seconds": round(train_seconds, 3),
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "lora": {
            "rank": config.lora.rank,
            "alpha": config.lora.alpha,
            "unet_targets": list(config.lora.unet_targets),
            "text_encoder_targets": list(config.lora.text_encoder_targets) if config.lora.train_text_encoders else [],
        },
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "checkpoint_bytes": max((p.stat().st_size for p in checkpoints), default=0),
        "adapter_bytes": {name: path.stat().st_size for name, path in adapter_files.items()},
        "final_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "seed": config.seed,
        "random_weights": random_weight_parts(config.model, config.scorer),
    }
