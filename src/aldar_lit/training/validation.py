"""Validation sampling during training: fixed-seed images from the in-memory model, scored for selection.

Every `every_n_steps` optimizer steps, `ValidationSampler` generates one image per (prompt, seed)
through a `StableDiffusionXLPipeline` assembled from the LightningModule's own parts (nothing is
reloaded), scores them with the scorer evaluate.py uses (`quality.subject_score.SubjectScorer`), logs
`val/clip_t`, `val/clip_i`, optional `val/dino` and `val/score`, and saves the images, a grid and a
`manifest.json` (each image's prompt and seed, in the storyboard manifest's frame layout, and the scores)
under `<run dir>/validation/step=XXXXXX/`, where evaluation's code can read them back. A
`ModelCheckpoint(monitor="val/score")` placed after it in the callback list picks them up at the same
step. Every rank generates the same images (same seeds); only rank 0 writes files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from aldar_lit.artifacts import StoryboardManifest, write_storyboard_manifest
from aldar_lit.atomic_write import write_png
from aldar_lit.image_grid import image_grid

log = logging.getLogger(__name__)

SCORE_KEY = "val/score"


@dataclass(frozen=True)
class Sample:
    prompt: str
    seed: int
    image: Image.Image


def assemble_pipeline(pl_module: L.LightningModule) -> StableDiffusionXLPipeline:
    """An SDXL pipeline over the module's live parts (LoRA included) with an Euler sampler."""
    pipe = StableDiffusionXLPipeline(
        vae=pl_module.vae,
        text_encoder=pl_module.text_encoder,
        text_encoder_2=pl_module.text_encoder_2,
        tokenizer=pl_module.tokenizers[0],
        tokenizer_2=pl_module.tokenizers[1],
        unet=pl_module.unet,
        scheduler=EulerDiscreteScheduler.from_config(pl_module.noise_scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def decode_latents(pipe: StableDiffusionXLPipeline, latents: torch.Tensor) -> list[Image.Image]:
    """The end of `StableDiffusionXLPipeline.__call__`, run in the VAE's own dtype outside any autocast.

    Under the training autocast the VAE would compute in bf16/fp16 whatever `model.vae_dtype` says. An
    fp16 VAE with `force_upcast` (the stock SDXL VAE) decodes in fp32, as the pipeline does.
    """
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    config = vae.config
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1).to(latents) for v in (config.latents_mean, config.latents_std))
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    with torch.autocast(latents.device.type, enabled=False):
        if upcast:
            vae.to(torch.float32)
        try:
            image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
    return pipe.image_processor.postprocess(image, output_type="pil")


def step_manifest(samples: Sequence[Sample], paths: Sequence[Path], metrics: dict[str, float],
                  step: int) -> StoryboardManifest:
    """The step's samples as storyboard manifest frames (index, file, prompt, seed, one attempt without QA)."""
    frames = [{"index": index, "file": path.name, "prompt": sample.prompt, "seed": sample.seed,
               "attempts": [{"attempt": 1, "seed": sample.seed, "qa": None}], "chosen_attempt": 1}
              for index, (sample, path) in enumerate(zip(samples, paths), start=1)]
    return StoryboardManifest(status="complete", mode="validation", step=step, metrics=metrics, frames=frames)


class ValidationSampler(L.Callback):
    """Generates, scores, logs and saves validation samples every `every_n_steps` steps.

    `scorer_factory(device)` builds the scorer in `setup`, on the trainer's device, before the
    SDXL parts are loaded; `history` holds one dict of scores per evaluation and is checkpointed.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        every_n_steps: int,
        scorer_factory: Callable[[torch.device], Any],
        output_dir: str | Path,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        resolution: int = 1024,
    ):
        if not prompts:
            raise ValueError("data.validation_prompts: validation needs at least one prompt")
        self.prompts, self.seeds = list(prompts), list(seeds)
        self.every_n_steps = every_n_steps
        self.scorer_factory = scorer_factory
        self.output_dir = Path(output_dir)
        self.num_inference_steps, self.guidance_scale, self.resolution = num_inference_steps, guidance_scale, resolution
        self.scorer: Any = None
        self.history: list[dict[str, float]] = []
        self._table_rows: list[list[Any]] = []

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.scorer is None:
            self.scorer = self.scorer_factory(trainer.strategy.root_device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or any(entry["step"] == step for entry in self.history):
            return  # not due, or already evaluated at this step (gradient accumulation)
        metrics = self.evaluate(trainer, pl_module)
        for name, value in metrics.items():  # for the val/score checkpoint monitor; the loggers get them below
            pl_module.log(f"val/{name}", value, on_step=True, on_epoch=False, batch_size=1, logger=False)
        for logger in trainer.loggers:  # at the step of the checkpoint scored, like its images (Lightning: step - 1)
            logger.log_metrics({f"val/{name}": value for name, value in metrics.items()}, step=step)
        self.history.append({"step": step, **metrics})
        log.info("step %d: %s", step, ", ".join(f"val/{k}={v:.4f}" for k, v in metrics.items()))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    # -- work ------------------------------------------------------------------------------
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        samples = self.generate(trainer, pl_module)
        metrics = self.scorer.score([s.image for s in samples], [s.prompt for s in samples])
        if trainer.is_global_zero:
            self.save_and_publish(trainer, samples, metrics, trainer.global_step)
        return metrics

    @torch.no_grad()
    def generate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Sample]:
        """One image per (prompt, seed), with dropout off; train/eval modes restored afterwards."""
        modes = {module: module.training for module in pl_module.modules()}
        pl_module.eval()
        try:
            pipe = assemble_pipeline(pl_module)
            samples = []
            for prompt in self.prompts:
                with trainer.precision_plugin.forward_context():  # denoising in the training precision
                    latents = pipe(
                        prompt=[prompt] * len(self.seeds),
                        generator=[torch.Generator("cpu").manual_seed(seed) for seed in self.seeds],
                        num_inference_steps=self.num_inference_steps,
                        guidance_scale=self.guidance_scale,
                        height=self.resolution,
                        width=self.resolution,
                        output_type="latent",
                    ).images
                images = decode_latents(pipe, latents)
                samples += [Sample(prompt, seed, image) for seed, image in zip(self.seeds, images)]
        finally:
            for module, training in modes.items():
                module.training = training
        return samples

    def save_and_publish(self, trainer: L.Trainer, samples: list[Sample], metrics: dict[str, float],
                         step: int) -> None:
        step_dir = self.output_dir / "validation" / f"step={step:06d}"
        step_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, sample in enumerate(samples):
            path = step_dir / f"p{index // len(self.seeds):02d}_seed{sample.seed}.png"
            write_png(path, sample.image)
            paths.append(path)
        write_png(step_dir / "grid.png", image_grid([s.image for s in samples], columns=len(self.seeds)))
        write_storyboard_manifest(step_dir, step_manifest(samples, paths, metrics, step))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self.log_to_wandb(logger, samples, paths, metrics, step)

    def log_to_wandb(self, logger: WandbLogger, samples: list[Sample], paths: list[Path],
                     metrics: dict[str, float], step: int) -> None:
        """The step's images with prompt/seed captions, and a table across all evaluations so far."""
        import wandb

        logger.log_image("val/samples", [str(p) for p in paths], step=step,
                         caption=[f"{s.prompt} | seed {s.seed} | step {step}" for s in samples])
        self._table_rows += [[step, s.prompt, s.seed, str(p), *(metrics[k] for k in sorted(metrics))]
                             for s, p in zip(samples, paths)]
        rows = [[*row[:3], wandb.Image(row[3]), *row[4:]] for row in self._table_rows]
        logger.log_table("val/table", columns=["step", "prompt", "seed", "image", *sorted(metrics)], data=rows,
                         step=step)
