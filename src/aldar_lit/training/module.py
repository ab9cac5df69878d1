"""SDXLLoRAModule: LoRA fine-tuning of SDXL's UNet and both text encoders, frozen VAE."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from hydra.utils import instantiate
from torch import nn

from aldar_lit.config import LoraConfig, ModelConfig, ObjectiveConfig, OptimConfig, as_plain_dict
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.models.compilation import compile_parts
from aldar_lit.models.loading import load_sdxl
from aldar_lit.models.lora import TE1, TE2, UNET, adapted_layers, attach_lora, uncast_adapter_inputs
from aldar_lit.models.conditioning import encode_prompts, time_ids
from aldar_lit.training.objective import denoising_loss

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


class SDXLLoRAModule(L.LightningModule):
    """Takes configs, not modules: the SDXL parts are loaded in `configure_model`.

    Checkpoints hold only the trainable LoRA tensors (plus optimizer and loop state); the
    frozen base weights come from `model.pretrained` again on resume.
    """

    def __init__(
        self,
        model: ModelConfig,
        lora: LoraConfig,
        optim: OptimConfig,
        objective: ObjectiveConfig,
        seed: int = 0,
    ):
        super().__init__()
        # plain dicts, so checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {"model": as_plain_dict(model), "lora": as_plain_dict(lora), "optim": as_plain_dict(optim),
             "objective": as_plain_dict(objective), "seed": seed},
            logger=False,
        )
        self.model_cfg, self.lora_cfg, self.optim_cfg, self.objective_cfg = model, lora, optim, objective
        self.seed = seed
        self.strict_loading = False  # checkpoints carry the adapters only
        # set by `configure_model` (SDXL is loaded there, on the run's device); read by validation and the data caches
        self.unet: UNet2DConditionModel | None = None
        self.vae: AutoencoderKL | None = None
        self.text_encoder: CLIPTextModel | None = None
        self.text_encoder_2: CLIPTextModelWithProjection | None = None
        self.tokenizers: tuple[CLIPTokenizer, CLIPTokenizer] | None = None
        self.noise_scheduler: DDPMScheduler | None = None
        self.trained_parts: tuple[str, ...] = ()  # of UNET, TE1, TE2: the parts with adapters
        self.adapted_layers: list[BaseTunerLayer] = []

    # -- model -----------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.unet is not None:
            return
        parts = load_sdxl(self.model_cfg)
        self.unet, self.vae = parts.unet, parts.vae
        self.text_encoder, self.text_encoder_2 = parts.text_encoder, parts.text_encoder_2
        self.tokenizers = (parts.tokenizer, parts.tokenizer_2)
        self.noise_scheduler = parts.training_noise_scheduler()
        if self.objective_cfg.prediction_type is not None:
            # on the scheduler, as diffusers' training scripts do, so that validation samples with it too
            self.noise_scheduler.register_to_config(prediction_type=self.objective_cfg.prediction_type)
        with torch.random.fork_rng(devices=[]):  # the adapters' initial weights depend on the seed alone
            torch.manual_seed(self.seed)
            self.trained_parts = tuple(attach_lora(self.sdxl_modules(), self.lora_cfg))
        self.adapted_layers = adapted_layers(self.sdxl_modules().values())
        for part, module in self.sdxl_modules().items():
            module.train(part in self.trained_parts)  # LoRA dropout active; frozen parts in eval
        self.vae.requires_grad_(False).eval()
        if self.model_cfg.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if self.model_cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.lora_cfg.train_text_encoders:
                for encoder in (self.text_encoder, self.text_encoder_2):
                    encoder.activation_checkpointing_enable({"use_reentrant": False})
        compile_parts(self.model_cfg, self.unet, (self.text_encoder, self.text_encoder_2))

    def on_fit_start(self) -> None:
        """Fill the datamodule's latent and text caches with the frozen VAE and text encoders, now on their device:
        each rank encodes its share of what is missing, then every rank waits for the others' files."""
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, CaptionedImageDataModule):
            datamodule.fill_caches(self, self.trainer.global_rank, self.trainer.world_size)
            self.trainer.strategy.barrier("data caches filled")

    def sdxl_modules(self) -> dict[str, nn.Module]:
        return {UNET: self.unet, TE1: self.text_encoder, TE2: self.text_encoder_2}

    def trained_modules(self) -> dict[str, nn.Module]:
        """The parts carrying LoRA adapters, keyed by part name."""
        return {part: self.sdxl_modules()[part] for part in self.trained_parts}

    def trainable_parameter_names(self) -> set[str]:
        return {name for name, param in self.named_parameters() if param.requires_grad}

    # -- training --------------------------------------------------------------------------
    def sample_generators(self, indices: torch.Tensor) -> list[torch.Generator]:
        """One generator per sample, seeded by (seed, step, dataset index).

        A sample's latent, noise and timestep draws depend neither on the rank nor on the batch it
        lands in, so N DDP ranks reproduce one process with the same global batch, and a resumed run
        draws exactly what the uninterrupted one did.
        """
        return [torch.Generator(device=self.device).manual_seed(hash((self.seed, self.global_step, i)) % 2**63)
                for i in indices.tolist()]

    def transfer_batch_to_device(self, batch: dict[str, Any], device: torch.device, dataloader_idx: int) -> Any:
        """Dataset indices stay on the host: they only seed the per-sample generators, and reading them
        back from the GPU would make every step wait for the previous one to finish."""
        moved = super().transfer_batch_to_device({k: v for k, v in batch.items() if k != "index"}, device,
                                                 dataloader_idx)
        return {**moved, "index": batch["index"]} if "index" in batch else moved

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(batch, self.sample_generators(batch["index"]))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["caption"]))
        return loss

    def compute_loss(self, batch: dict[str, Any], generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
        """`batch` holds `pixel_values` or cached `latent_dist` (VAE posterior parameters), and may hold
        cached `prompt_embeds` + `pooled_prompt_embeds` (see `aldar_lit.data.caches`). Every random
        draw comes from `generator`, or from one generator per sample (diffusers' `randn_tensor` rule)."""
        device = self.device.type
        autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        # under autocast, peft's cast of each adapter input to fp32 is undone at once by autocast: two
        # activation-sized copies per adapted layer and step, for the same result as none
        with uncast_adapter_inputs(self.adapted_layers) if autocast else contextlib.nullcontext():
            return self._loss(batch, generator)

    def _loss(self, batch: dict[str, Any], generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
        # the VAE runs in model.vae_dtype, outside the training autocast (the stock SDXL VAE overflows in fp16)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            if "latent_dist" in batch:
                posterior = DiagonalGaussianDistribution(batch["latent_dist"].to(self.vae.dtype))
            else:
                posterior = self.vae.encode(batch["pixel_values"].to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator) * self.vae.config.scaling_factor
        if "prompt_embeds" in batch:
            prompt_embeds, pooled = batch["prompt_embeds"], batch["pooled_prompt_embeds"]
        else:
            with torch.set_grad_enabled(self.lora_cfg.train_text_encoders and torch.is_grad_enabled()):
                prompt_embeds, pooled = encode_prompts(
                    self.tokenizers, (self.text_encoder, self.text_encoder_2), batch["caption"]
                )
        add_time_ids = time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])
        return denoising_loss(
            self.unet, self.noise_scheduler, latents.float(), prompt_embeds, pooled, add_time_ids,
            generator, self.objective_cfg,
        )

    def configure_optimizers(self) -> dict[str, Any]:
        learning_rates = {UNET: self.optim_cfg.unet_lr, TE1: self.optim_cfg.text_encoder_lr,
                          TE2: self.optim_cfg.text_encoder_lr}
        groups = [
            {"name": part, "lr": learning_rates[part], "params": [p for p in module.parameters() if p.requires_grad]}
            for part, module in self.trained_modules().items()
        ]
        optimizer = instantiate(self.optim_cfg.optimizer)(groups)
        scheduler = instantiate(self.optim_cfg.scheduler)(
            optimizer=optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self.trainable_parameter_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self.trainable_parameter_names() - checkpoint["state_dict"].keys()
        if missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} LoRA tensors of this model "
                f"(e.g. {sorted(missing)[0]}); was it trained with other lora.* settings?"
            )
