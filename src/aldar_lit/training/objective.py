"""The denoising objective: noise, timesteps, prediction target and loss weighting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from diffusers.utils.torch_utils import randn_tensor

from aldar_lit.config import ObjectiveConfig


def denoising_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_prompt_embeds: torch.Tensor,
    add_time_ids: torch.Tensor,
    generator: torch.Generator | list[torch.Generator],
    cfg: ObjectiveConfig,
) -> torch.Tensor:
    """One Monte-Carlo sample of the diffusion loss per latent, all randomness drawn from `generator`
    (or from one generator per latent).

    Supports epsilon and v-prediction (from `cfg` or the scheduler's config), the noise-offset
    trick and min-SNR-gamma weighting (Hang et al. 2023).
    """
    batch = latents.shape[0]
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if cfg.noise_offset > 0:
        offset = randn_tensor((batch, latents.shape[1], 1, 1), generator=generator, device=latents.device,
                              dtype=latents.dtype)
        noise = noise + cfg.noise_offset * offset
    timesteps = random_timesteps(scheduler.config.num_train_timesteps, batch, generator, latents.device)
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)

    prediction = unet(
        noisy_latents.to(unet.dtype),
        timesteps,
        encoder_hidden_states=prompt_embeds.to(unet.dtype),
        added_cond_kwargs={"text_embeds": pooled_prompt_embeds.to(unet.dtype), "time_ids": add_time_ids.to(unet.dtype)},
    ).sample

    prediction_type = cfg.prediction_type or scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"objective.prediction_type: unsupported prediction type {prediction_type!r}")

    if cfg.min_snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    snr = compute_snr(scheduler, timesteps)
    weights = snr.clamp(max=cfg.min_snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def random_timesteps(num_train_timesteps: int, batch: int, generator: torch.Generator | list[torch.Generator],
                     device: torch.device) -> torch.Tensor:
    if isinstance(generator, list):
        draws = [torch.randint(0, num_train_timesteps, (1,), generator=g, device=g.device) for g in generator]
        return torch.cat(draws).to(device)
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device)
