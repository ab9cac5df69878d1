"""Typed training configuration: the schema Hydra composes into, validated before any work starts.

The dataclasses are registered as Hydra structured configs, so a misspelt key or a value of the
wrong type fails at composition; `__post_init__` checks the values and names the offending key.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from aldar_lit.config.core import check_choices, require, to_schema
from aldar_lit.config.shared import TRIGGER, PathsConfig, ScorerConfig
from aldar_lit.tool_command import tool_command


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class CompileScope(StrEnum):
    unet = "unet"  # the whole UNet
    blocks = "blocks"  # each repeated transformer block (diffusers' regional compilation)


class LoraInit(StrEnum):  # peft's init_lora_weights
    default = "default"
    gaussian = "gaussian"
    pissa = "pissa"
    olora = "olora"


class PredictionType(StrEnum):
    epsilon = "epsilon"
    v_prediction = "v_prediction"


class Crop(StrEnum):
    center = "center"
    random = "random"


class BadFilePolicy(StrEnum):
    skip = "skip"  # log the file and why, summary at start
    error = "error"  # raise naming it


@dataclass
class ModelConfig:
    """Where the SDXL parts come from and in which precision the frozen ones live."""

    name: str = "sdxl_base"
    pretrained: str = "stabilityai/stable-diffusion-xl-base-1.0"  # hub id or local diffusers dir
    random_init: Optional[str] = None  # a packaged spec ("tiny", "sdxl") to build with random weights
    materialise: bool = True  # write a random model to `pretrained` once and load it from there
    seed: int = 0  # seed of the random weights
    variant: Optional[str] = None  # e.g. "fp16" for the hub's half-precision files
    revision: Optional[str] = None
    vae: Optional[str] = None  # a VAE override, e.g. madebyollin/sdxl-vae-fp16-fix
    dtype: Dtype = Dtype.float32  # frozen UNet and text encoders; LoRA weights always train in float32
    vae_dtype: Dtype = Dtype.float32  # the stock SDXL VAE overflows in float16
    gradient_checkpointing: bool = False
    channels_last: bool = False  # UNet activations in NHWC (faster convolutions on recent GPUs)
    compile_unet: Optional[str] = None  # a torch.compile backend for the UNet, e.g. "inductor"
    compile_text_encoders: Optional[str] = None  # the same for both text encoders
    compile_mode: Optional[str] = None  # torch.compile mode of the compiled parts, e.g. reduce-overhead (CUDA graphs)
    # what compile_unet compiles: the whole UNet, or each of its repeated transformer blocks (diffusers' regional
    # compilation: one block's code serves all blocks of its shape, so compiling takes a fraction of the time)
    compile_unet_scope: CompileScope = CompileScope.blocks
    # with compiled parts: the share (0-1] of their activations the compiler may keep for the backward pass; it
    # recomputes the cheapest of the rest there (torch._functorch.config.activation_memory_budget)
    activation_memory_budget: Optional[float] = None

    def __post_init__(self) -> None:
        check_choices(self, "model")
        require(bool(self.pretrained), "model.pretrained", "must name a hub id or a local directory")
        for key in ("compile_unet", "compile_text_encoders"):
            backend = getattr(self, key)
            if backend is not None:
                import torch._dynamo

                backends = torch._dynamo.list_backends(exclude_tags=())
                require(backend in backends, f"model.{key}",
                        f"must be a torch.compile backend {backends} or null, got {backend!r}")
        if self.compile_mode is not None:
            from torch._inductor import list_mode_options

            modes = sorted(list_mode_options())
            require(self.compile_mode in modes, "model.compile_mode", f"must be one of {modes} or null, "
                    f"got {self.compile_mode!r}")
            require(self.compile_unet is not None or self.compile_text_encoders is not None, "model.compile_mode",
                    "applies to compiled parts only: set model.compile_unet and/or model.compile_text_encoders")
        if self.activation_memory_budget is not None:
            require(0 < self.activation_memory_budget <= 1, "model.activation_memory_budget",
                    f"must be in (0, 1], got {self.activation_memory_budget}")
            require(self.compile_unet is not None or self.compile_text_encoders is not None,
                    "model.activation_memory_budget", "applies to compiled parts only: set model.compile_unet "
                    "and/or model.compile_text_encoders")
        if self.random_init is not None:
            from aldar_lit.offline.random_init import spec_dir

            spec_dir(self.random_init)


@dataclass
class LoraConfig:
    """PEFT LoRA on the UNet's attention projections and on both CLIP text encoders."""

    rank: int = 64
    alpha: float = 64.0  # scale = alpha / rank
    dropout: float = 0.0
    init: LoraInit = LoraInit.gaussian  # default | gaussian | pissa | olora (peft's init_lora_weights)
    unet_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    text_encoder_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    train_text_encoders: bool = True

    def __post_init__(self) -> None:
        check_choices(self, "lora")
        require(self.rank > 0, "lora.rank", f"must be a positive integer, got {self.rank}")
        require(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        require(len(self.unet_targets) > 0, "lora.unet_targets", "must name at least one module")
        if self.train_text_encoders:
            require(len(self.text_encoder_targets) > 0, "lora.text_encoder_targets", "must name at least one module")


@dataclass
class DemoDataConfig:
    """The procedurally drawn demo character, generated into `dir` on first use; `data.root` must be that folder."""

    dir: str = "???"
    num_images: int = 24
    size: int = 256
    seed: int = 0


@dataclass
class DataConfig:
    """A folder of images with sidecar `.txt` captions or a `metadata.jsonl`."""

    root: str = "???"
    trigger: str = TRIGGER  # put first in any caption that lacks it
    resolution: int = 1024
    crop: Crop = Crop.center
    random_flip: bool = False  # off: a flip mirrors asymmetric costume details
    batch_size: int = 4
    num_workers: int = 4
    demo: Optional[DemoDataConfig] = None
    validation_prompts: list[str] = field(default_factory=list)
    bucketing: bool = True  # SDXL's aspect-ratio buckets scaled to `resolution`; false: square crops only
    bucket_multiple: int = 32  # bucket sides are multiples of this (SDXL's UNet needs 32; 8 is enough for model=tiny)
    on_bad_file: BadFilePolicy = BadFilePolicy.skip
    min_image_side: int = 64  # images whose shorter side is smaller are bad files
    max_image_pixels: int = 89_478_485  # larger images are bad files (decompression bombs; PIL refuses > 2x this)
    cache_latents: bool = False  # VAE latents cached on disk under `cache_dir`, reused across runs
    cache_text_embeddings: bool = False  # prompt embeddings cached too, when lora.train_text_encoders=false
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        check_choices(self, "data")
        require(self.resolution >= 8 and self.resolution % 8 == 0, "data.resolution",
                 f"must be a positive multiple of 8, got {self.resolution}")
        require(8 <= self.bucket_multiple <= self.resolution and self.bucket_multiple % 8 == 0, "data.bucket_multiple",
                 f"must be a multiple of 8 no larger than data.resolution, got {self.bucket_multiple}")
        require(self.min_image_side >= 1, "data.min_image_side", f"must be >= 1, got {self.min_image_side}")
        require(self.max_image_pixels >= self.min_image_side**2, "data.max_image_pixels",
                 f"must be at least data.min_image_side squared, got {self.max_image_pixels}")
        if self.cache_latents or self.cache_text_embeddings:
            require(bool(self.cache_dir), "data.cache_dir", "must be set when a data cache is on")
        if self.cache_latents:
            require(self.crop == "center" and not self.random_flip, "data.cache_latents",
                     "needs data.crop=center and data.random_flip=false (a cached latent fixes the crop); "
                     "set data.cache_latents=false to train with random crops or flips")
        require(self.batch_size > 0, "data.batch_size", f"must be a positive integer, got {self.batch_size}")
        require(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        require(bool(self.trigger.strip()), "data.trigger", "must not be empty")


@dataclass
class OptimConfig:
    """Optimizer and LR schedule as Hydra `_partial_` factories, plus one learning rate per model part."""

    optimizer: Any = field(default_factory=lambda: {"_target_": "torch.optim.AdamW", "_partial_": True})
    scheduler: Any = field(
        default_factory=lambda: {"_target_": "diffusers.optimization.get_scheduler", "_partial_": True, "name": "constant"}
    )
    unet_lr: float = 1e-4
    text_encoder_lr: float = 5e-5

    def __post_init__(self) -> None:
        require(self.unet_lr > 0, "optim.unet_lr", f"must be positive, got {self.unet_lr}")
        require(self.text_encoder_lr > 0, "optim.text_encoder_lr", f"must be positive, got {self.text_encoder_lr}")
        for key, node in (("optim.optimizer", self.optimizer), ("optim.scheduler", self.scheduler)):
            require(isinstance(node, dict) and "_target_" in node, key, "must be a mapping with a `_target_`")


@dataclass
class ObjectiveConfig:
    """The denoising loss: prediction target and the usual re-weightings."""

    prediction_type: Optional[PredictionType] = None  # None: the model's scheduler config's (epsilon for SDXL base)
    noise_offset: float = 0.0
    min_snr_gamma: Optional[float] = None  # e.g. 5.0

    def __post_init__(self) -> None:
        check_choices(self, "objective")
        require(self.noise_offset >= 0, "objective.noise_offset", f"must be >= 0, got {self.noise_offset}")
        if self.min_snr_gamma is not None:
            require(self.min_snr_gamma > 0, "objective.min_snr_gamma", f"must be positive, got {self.min_snr_gamma}")


@dataclass
class CheckpointConfig:
    """LoRA-only Lightning checkpoints under `<run dir>/checkpoints`."""

    every_n_train_steps: Optional[int] = None  # None: at the end of training only; e.g. 200
    save_last: bool = True
    at_steps: list[int] = field(default_factory=list)  # extra checkpoints, e.g. the justification's 200/400/800/1500

    def __post_init__(self) -> None:
        if self.every_n_train_steps is not None:
            require(self.every_n_train_steps > 0, "checkpoint.every_n_train_steps",
                     f"must be a positive integer, got {self.every_n_train_steps}")
        require(all(step > 0 for step in self.at_steps), "checkpoint.at_steps",
                 f"must hold positive step numbers, got {list(self.at_steps)}")


@dataclass
class ValidationConfig:
    """Fixed-seed validation samples every `every_n_steps`, scored into `val/score` for checkpoint selection."""

    enabled: bool = False
    every_n_steps: int = 100
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    resolution: Optional[int] = None  # None: data.resolution
    top_k: int = 3  # best checkpoints by val/score kept on disk
    max_reference_images: int = 32  # training images used as CLIP-I/DINO references

    def __post_init__(self) -> None:
        require(self.every_n_steps > 0, "validation.every_n_steps", f"must be positive, got {self.every_n_steps}")
        require(len(self.seeds) > 0, "validation.seeds", "must hold at least one seed")
        require(self.num_inference_steps > 0, "validation.num_inference_steps",
                 f"must be positive, got {self.num_inference_steps}")
        require(self.guidance_scale >= 0, "validation.guidance_scale", f"must be >= 0, got {self.guidance_scale}")
        if self.resolution is not None:
            require(self.resolution >= 8 and self.resolution % 8 == 0, "validation.resolution",
                     f"must be a positive multiple of 8, got {self.resolution}")
        require(self.top_k > 0, "validation.top_k", f"must be a positive integer, got {self.top_k}")
        require(self.max_reference_images > 0, "validation.max_reference_images",
                 f"must be positive, got {self.max_reference_images}")


def random_weight_parts(model: ModelConfig, scorer: ScorerConfig) -> list[str]:
    """The parts that have random weights (the tiny configs), for train.py's summary and evaluate.py's report: with
    any, their scores measure nothing, so no best run or significant difference is claimed."""
    parts = []
    if model.random_init is not None:
        parts.append(f"model {model.name} (random_init={model.random_init})")
    if scorer.clip.pretrained is None:
        parts.append(f"CLIP scorer {scorer.clip.model_name}")
    if scorer.dino is not None and not scorer.dino.pretrained:
        parts.append(f"DINO scorer {scorer.dino.model_name}")
    return parts


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    trainer: Any = field(default_factory=lambda: {"_target_": "lightning.Trainer"})
    logger: Any = field(default_factory=dict)  # name -> Lightning logger spec (`_target_`)
    seed: int = 0
    ckpt_path: Optional[str] = None  # resume from this Lightning checkpoint, e.g. outputs/.../checkpoints/last.ckpt
    optimized_metric: str = "train/loss"  # what train.py returns to a Hydra sweeper
    # progress-bar refresh, in steps: each refresh reads the loss back from the GPU, which stalls the step
    progress_every_n_steps: int = 10
    experiment: Optional[str] = None  # set by experiment configs, for logs

    def __post_init__(self) -> None:
        require(isinstance(self.trainer, dict) and "_target_" in self.trainer, "trainer",
                 "must be a mapping with a `_target_`")
        if self.validation.enabled:
            require(len(self.data.validation_prompts) > 0, "data.validation_prompts",
                     "validation.enabled needs at least one prompt")
        if self.data.demo is not None:  # a user's data.root means their images, never a place to draw the demo
            experiment = [f"experiment={self.experiment}"] if self.experiment else []
            command = shlex.join([*tool_command("train"), *experiment, "data=folder", f"data.root={self.data.root}"])
            require(self.data.root == self.data.demo.dir, "data.root",
                    f"data=demo trains on the demo character drawn into data.demo.dir={self.data.demo.dir}, not on "
                    f"{self.data.root}; to train on your images: {command}")
        if self.ckpt_path is not None:
            # Lightning would fetch a URL and unpickle it in full (code included): only local files resume
            require("://" not in self.ckpt_path, "ckpt_path",
                    f"must be a local checkpoint file, got the URL {self.ckpt_path!r}; download it first")
            require(os.path.isfile(self.ckpt_path), "ckpt_path",
                    f"no checkpoint file at {self.ckpt_path}")
        require(self.progress_every_n_steps >= 1, "progress_every_n_steps",
                f"must be a positive integer, got {self.progress_every_n_steps}")
        clipped_mixed = self.trainer.get("gradient_clip_val") and str(self.trainer.get("precision")).endswith("-mixed")
        require(not (self.optim.optimizer.get("fused") and clipped_mixed), "optim.optimizer.fused",
                "Lightning cannot clip the gradients of a fused optimizer under mixed precision; "
                "drop it or set trainer.gradient_clip_val=null")
        require(self.validation.enabled or not self.optimized_metric.startswith("val/"), "optimized_metric",
                 f"{self.optimized_metric!r} is logged only with validation.enabled=true (callbacks=validation)")


def register_configs() -> None:
    """Make the schema available to `conf/train.yaml` as `train_schema`."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    return to_schema(cfg, TrainConfig, "train_schema")
