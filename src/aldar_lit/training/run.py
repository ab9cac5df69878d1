"""`train.py`'s body: config -> data -> SDXLLoRAModule -> Lightning fit -> exported adapter + summary."""

from __future__ import annotations

import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, get_method, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from aldar_lit.config import ConfigError, TrainConfig, to_train_config
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.models.export import export_lora
from aldar_lit.models.loading import resolve_pretrained
from aldar_lit.training.module import SDXLLoRAModule

log = logging.getLogger(__name__)


def check_factories(config: TrainConfig) -> None:
    """Import every `_target_` now, so a typo fails before any model is loaded."""
    for key, node in (("optim.optimizer", config.optim.optimizer), ("optim.scheduler", config.optim.scheduler),
                      ("trainer", config.trainer), *((f"logger.{k}", v) for k, v in config.logger.items())):
        try:
            (get_method if node.get("_partial_") else get_class)(node["_target_"])
        except Exception as err:
            raise ConfigError(f"{key}._target_: cannot import {node.get('_target_')!r} ({err})") from err


def build_trainer(config: TrainConfig, output_dir: Path) -> L.Trainer:
    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        filename="step-{step:06d}",
        auto_insert_metric_name=False,
        every_n_train_steps=config.checkpoint.every_n_train_steps,
        save_top_k=-1,
        save_last=config.checkpoint.save_last,
        save_weights_only=False,
    )
    loggers = [instantiate(spec) for spec in config.logger.values()]
    return instantiate(config.trainer, callbacks=[checkpoint], logger=loggers or False, default_root_dir=output_dir)


def peak_memory() -> tuple[int, str]:
    """Peak CUDA memory allocated by torch on GPU; peak resident set size of the process on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_max_rss"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(payload, tmp, indent=2)
    os.replace(tmp.name, path)


def run(cfg: DictConfig) -> float:
    """Train, export `lora/`, write `summary.json`; return `optimized_metric` for Hydra sweepers."""
    config = to_train_config(cfg)
    check_factories(config)
    output_dir = Path(config.paths.output_dir)
    L.seed_everything(config.seed, workers=True)

    datamodule = CaptionedImageDataModule(config.data, seed=config.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")  # validates every image and caption before a model is loaded
    module = SDXLLoRAModule(config.model, config.lora, config.optim, config.objective, seed=config.seed)
    trainer = build_trainer(config, output_dir)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=config.ckpt_path)
    train_seconds = time.perf_counter() - started

    adapter_files = export_lora(module.trained_modules(), config.lora, output_dir / "lora")
    summary = make_summary(config, module, trainer, train_seconds, adapter_files)
    write_json_atomic(output_dir / "summary.json", summary)
    log.info("LoRA written to %s", output_dir / "lora")
    metric = trainer.callback_metrics.get(config.optimized_metric)
    if metric is None:
        raise ConfigError(f"optimized_metric: {config.optimized_metric!r} was never logged; "
                          f"logged metrics: {sorted(trainer.callback_metrics)}")
    return float(metric)


def make_summary(config: TrainConfig, module: SDXLLoRAModule, trainer: L.Trainer, train_seconds: float,
                 adapter_files: dict[str, Path]) -> dict[str, Any]:
    checkpoints = sorted((Path(config.paths.output_dir) / "checkpoints").glob("*.ckpt"))
    memory, memory_kind = peak_memory()
    return {
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
    }
