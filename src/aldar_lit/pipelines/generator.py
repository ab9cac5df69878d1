"""The diffusion side of a storyboard: SDXL (+ LoRA), and for ref_guided an IP-Adapter and an OpenPose
ControlNet, each loaded once per run through diffusers' own loaders."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from PIL import Image
from safetensors import safe_open

from aldar_lit.artifacts import ADAPTER_CARD, read_adapter_card
from aldar_lit.config import ModelConfig
from aldar_lit.models.export import DIFFUSERS_WEIGHTS
from aldar_lit.models.loading import load_sdxl, resolve_pretrained, torch_dtype
from aldar_lit.offline.random_init import spec_dir
from aldar_lit.config.infer import AdaptersConfig, LoraSourceConfig
from aldar_lit.pipelines.lora_fit import LoraFit, lora_fit
from aldar_lit.pipelines.shared_attention import SharedFrame, SharedTokens
from aldar_lit.offline.tiny_adapters import materialise_tiny_controlnet, materialise_tiny_ip_adapter
from aldar_lit.pipelines.retry_policy import Settings

log = logging.getLogger(__name__)

LORA_ADAPTER = "storyboard_lora"  # the name the LoRA is loaded under
SHOWN_KEYS = 5  # unmatched LoRA keys named in an error


class AdapterError(ValueError):
    """A LoRA / IP-Adapter / ControlNet that is missing or does not fit the base model; names the config key."""


def is_local(source: str) -> bool:
    """Paths (absolute, ~, ./) must exist; anything else is taken for a hub id."""
    return source.startswith(("/", "~", ".")) or Path(source).exists()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_lora_dir(lora: str) -> Path:
    path = Path(lora).expanduser()
    if not (path / DIFFUSERS_WEIGHTS).is_file():
        what = "no such directory" if not path.is_dir() else f"no {DIFFUSERS_WEIGHTS} in it"
        raise AdapterError(f"lora: {str(path)!r}: {what} (give a training run's `lora/` dir)")
    return path


def adapter_card_prediction_type(lora_dir: Path) -> Optional[str]:
    """What the adapter was trained to predict, from its card (None without a card, or a card that does not say)."""
    if not (lora_dir / ADAPTER_CARD).is_file():
        return None
    try:
        return read_adapter_card(lora_dir).prediction_type
    except ValueError as err:
        raise AdapterError(f"lora: {err}") from err


def materialise_adapters(cfg: AdaptersConfig, base_model: str) -> None:
    """Write the tiny random adapters once where the config expects them (offline runs/tests)."""
    if cfg.ip_adapter.random_init == "tiny":
        materialise_tiny_ip_adapter(base_model, Path(cfg.ip_adapter.repo).expanduser(), cfg.ip_adapter.seed)
    if cfg.controlnet.random_init == "tiny":
        materialise_tiny_controlnet(base_model, Path(cfg.controlnet.pretrained).expanduser(), cfg.controlnet.seed)


def check_adapters_fit(cfg: AdaptersConfig, unet_config: dict[str, Any]) -> None:
    """Before any frame: local adapter files exist and were made for this UNet (shapes from headers only)."""
    ip = cfg.ip_adapter
    if is_local(ip.repo):
        weights = Path(ip.repo).expanduser() / ip.subfolder / ip.weight_name
        if not weights.is_file():
            raise AdapterError(f"adapters.ip_adapter: no such file {str(weights)!r} (repo/subfolder/weight_name)")
        encoder = Path(ip.repo).expanduser() / ip.image_encoder_folder
        if not (encoder / "config.json").is_file():
            raise AdapterError(f"adapters.ip_adapter.image_encoder_folder: no image encoder at {str(encoder)!r}")
        with safe_open(str(weights), framework="pt") as f:
            key = next((k for k in f.keys() if k.endswith("to_k_ip.weight")), None)
            width = None if key is None else f.get_slice(key).get_shape()[1]
        if width != unet_config["cross_attention_dim"]:
            raise AdapterError(f"adapters.ip_adapter: {str(weights)!r} was made for a UNet with cross-attention width "
                               f"{width}, the base model has {unet_config['cross_attention_dim']} "
                               "(an adapter for another base model?)")
    cn = cfg.controlnet
    if is_local(cn.pretrained):
        config_file = Path(cn.pretrained).expanduser() / "config.json"
        if not config_file.is_file():
            raise AdapterError(f"adapters.controlnet.pretrained: no ControlNet at {str(config_file.parent)!r}")
        cn_config = json.loads(config_file.read_text())
        for key in ("cross_attention_dim", "block_out_channels", "in_channels"):
            if cn_config.get(key) != unet_config.get(key):
                raise AdapterError(f"adapters.controlnet.pretrained: {str(config_file.parent)!r} has {key}="
                                   f"{cn_config.get(key)}, the base model's UNet has {unet_config.get(key)} "
                                   "(a ControlNet for another base model?)")


def _first_line(err: Exception) -> str:
    """The telling line of a loader error (the first shape mismatch, when there is one)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return next((line for line in lines if "size mismatch" in line), lines[0])[:400]


@contextlib.contextmanager
def ip_adapter_bypassed(unet: torch.nn.Module) -> Iterator[None]:
    """Run `unet` as if no IP-Adapter were loaded, keeping its weights for the next guided frame.

    `load_ip_adapter` rewires the UNet shared by the base and the guided pipeline (an image
    projection plus IP attention processors); unguided calls (frame 1 of the next storyboard)
    would then demand image embeddings.
    """
    processors = unet.attn_processors
    projection, kind = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    unet.set_attn_processor({name: AttnProcessor2_0() if isinstance(p, IPAdapterAttnProcessor2_0) else p
                             for name, p in processors.items()})
    unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = None, None
    try:
        yield
    finally:  # the projection first: its own attention layers are among `processors`
        unet.encoder_hid_proj, unet.config.encoder_hid_dim_type = projection, kind
        unet.set_attn_processor(dict(processors))


def latents_in_vae_dtype(pipe: StableDiffusionXLPipeline, step: int, timestep: torch.Tensor,
                         callback_kwargs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `callback_on_step_end` that hands the VAE the final latents in its own dtype.

    diffusers 0.42's SDXL pipelines cast the latents before decoding only for an fp16 VAE with
    `force_upcast`, so bf16/fp16 latents would reach an fp32 VAE (`model=sdxl_base`) or fp32 latents a
    half-precision one, and the decode fails on mixed dtypes. An fp16 VAE with `force_upcast` is
    still upcast by the pipeline itself.
    """
    if step == pipe.num_timesteps - 1:
        return {"latents": callback_kwargs["latents"].to(pipe.vae.dtype)}
    return {}


@dataclass
class RefGuidance:
    """What conditions a ref_guided frame beyond its prompt."""

    reference: Image.Image  # the identity image for the IP-Adapter (frame 1's face crop)
    pose: Image.Image  # the OpenPose control image


class StoryboardGenerator:
    """Loads the base pipeline (and LoRA) at construction; the adapters on the first ref_guided frame."""

    def __init__(self, model: ModelConfig, lora: LoraSourceConfig, adapters: AdaptersConfig, device: str = "auto",
                 progress: bool = False, prediction_type: Optional[str] = None):
        self.model_cfg = model
        self.adapters = adapters
        self.device = resolve_device(device)
        components = load_sdxl(model)
        self.base = StableDiffusionXLPipeline(**{f.name: getattr(components, f.name) for f in fields(components)})
        self.lora: Optional[str] = None
        self.lora_scale = lora.scale
        self.lora_fit: Optional[LoraFit] = None
        if lora.path is not None:
            self.lora = str(check_lora_dir(lora.path))
            self.lora_fit = self._load_lora(self.lora, lora.allow_partial)
        self.scheduler_info = self._set_prediction_type(prediction_type)
        self.base.to(self.device)
        self.base.set_progress_bar_config(disable=not progress, leave=False)
        self.guided: Optional[StableDiffusionXLControlNetPipeline] = None
        self.progress = progress

    def _load_lora(self, path: str, allow_partial: bool) -> LoraFit:
        """Load the LoRA and check that the model holds every tensor of it (or, with `allow_partial`, some)."""
        try:
            self.base.load_lora_weights(path, weight_name=DIFFUSERS_WEIGHTS, adapter_name=LORA_ADAPTER)
        except (RuntimeError, ValueError, KeyError) as err:
            raise AdapterError(f"lora: {path!r} does not fit the base model {self.model_cfg.pretrained!r} "
                               f"(trained on another base model?): {_first_line(err)}") from err
        state_dict, _ = self.base.lora_state_dict(path, weight_name=DIFFUSERS_WEIGHTS)
        fit = lora_fit(self.base, state_dict, LORA_ADAPTER)
        if fit.unmatched:
            problem = (f"lora: {path!r}: {len(fit.unmatched)} of its {fit.tensors} tensors fit no module of the base "
                       f"model {self.model_cfg.pretrained!r} (trained on another base model?), e.g. "
                       f"{', '.join(fit.unmatched[:SHOWN_KEYS])}")
            if not fit.applied:
                raise AdapterError(problem)
            if not allow_partial:
                raise AdapterError(f"{problem}; lora.allow_partial=true uses the {fit.applied} that fit")
            log.warning("%s; using the %d that fit (lora.allow_partial=true)", problem, fit.applied)
        return fit

    def _set_prediction_type(self, requested: Optional[str]) -> dict[str, Any]:
        """Put what the UNet predicts on the scheduler: `requested`, else the adapter card's, else the base model's."""
        scheduler = self.base.scheduler
        card = adapter_card_prediction_type(Path(self.lora)) if self.lora is not None else None
        if requested is not None:
            source = "generation.prediction_type"
            if card is not None and card != requested:
                log.warning("generation.prediction_type=%s overrides %s, which says the adapter was trained for %s",
                            requested, Path(self.lora) / ADAPTER_CARD, card)
        elif card is not None:
            requested, source = card, f"adapter card ({ADAPTER_CARD})"
        else:
            requested, source = scheduler.config.prediction_type, "base model scheduler"
        self.base.scheduler = type(scheduler).from_config(scheduler.config, prediction_type=requested)
        return {"class": type(scheduler).__name__, "prediction_type": requested, "source": source,
                "adapter_card": card}

    def precision(self) -> dict[str, Any]:
        """The dtypes the parts compute in (an fp16 VAE with `force_upcast` decodes in float32)."""
        vae = self.base.vae
        return {"unet": str(self.base.unet.dtype).removeprefix("torch."),
                "text_encoders": str(self.base.text_encoder.dtype).removeprefix("torch."),
                "vae": str(vae.dtype).removeprefix("torch."), "vae_force_upcast": bool(vae.config.force_upcast)}

    def enable_reference_guidance(self) -> None:
        """Load the ControlNet and the IP-Adapter (once) into a pipeline sharing the base's modules."""
        if self.guided is not None:
            return
        ip, cn = self.adapters.ip_adapter, self.adapters.controlnet
        dtype = torch_dtype(self.model_cfg.dtype)
        try:
            controlnet = ControlNetModel.from_pretrained(os.path.expanduser(cn.pretrained), variant=cn.variant,
                                                         torch_dtype=dtype)
        except (OSError, RuntimeError, ValueError) as err:
            raise AdapterError(f"adapters.controlnet.pretrained: cannot load {cn.pretrained!r}: {err}") from err
        pipe = StableDiffusionXLControlNetPipeline(**self.base.components, controlnet=controlnet)
        try:
            pipe.load_ip_adapter(os.path.expanduser(ip.repo), subfolder=ip.subfolder, weight_name=ip.weight_name,
                                 image_encoder_folder=ip.image_encoder_folder)
        except (OSError, RuntimeError, ValueError, KeyError) as err:
            raise AdapterError(f"adapters.ip_adapter: cannot load {ip.repo!r}/{ip.subfolder}/{ip.weight_name} into "
                               f"the base model: {_first_line(err)}") from err
        pipe.set_ip_adapter_scale(ip.scale)
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=not self.progress, leave=False)
        self.guided = pipe

    def _call_kwargs(self, prompt: str | list[str], negative_prompt: str, settings: Settings | list[Settings],
                     width: int, height: int, steps: int) -> dict[str, Any]:
        """Pipeline arguments; CPU generators seeded with each frame's seed make frames reproducible on any device."""
        batch = settings if isinstance(settings, list) else [settings]
        generators = [torch.Generator("cpu").manual_seed(s.seed) for s in batch]
        return dict(prompt=prompt, negative_prompt=negative_prompt or None, width=width, height=height,
                    num_inference_steps=steps, guidance_scale=batch[0].guidance_scale,
                    generator=generators if isinstance(settings, list) else generators[0],
                    cross_attention_kwargs={"scale": self.lora_scale} if self.lora is not None else None,
                    callback_on_step_end=latents_in_vae_dtype)

    def generate(self, prompt: str, negative_prompt: str, settings: Settings, width: int, height: int, steps: int,
                 guidance: Optional[RefGuidance] = None, shared: Optional[SharedFrame] = None) -> Image.Image:
        """One frame (with `shared`, its self-attention also sees the storyboard's kept anchor tokens)."""
        common = self._call_kwargs(prompt, negative_prompt, settings, width, height, steps)
        with torch.inference_mode():
            if guidance is not None:
                self.enable_reference_guidance()  # before sharing is installed: loading replaces every processor
            sharing = shared.installed(self.base.unet) if shared is not None else contextlib.nullcontext()
            with sharing:
                if guidance is None:
                    with self._unguided():
                        return self.base(**common).images[0]
                return self.guided(**common, image=guidance.pose, ip_adapter_image=guidance.reference,
                                   controlnet_conditioning_scale=self.adapters.controlnet.conditioning_scale).images[0]

    def record_shared_tokens(self, tokens: SharedTokens, prompts: list[str], negative_prompt: str,
                             settings: list[Settings], width: int, height: int, steps: int) -> None:
        """Denoise the anchor frames as one batch (SDXL + LoRA, one CFG scale: the first frame's), keeping their
        shared self-attention tokens; the latents are dropped (each frame is then generated on its own)."""
        common = self._call_kwargs(prompts, negative_prompt, settings, width, height, steps)
        common.pop("callback_on_step_end")
        with torch.inference_mode(), tokens.recording(self.base.unet), self._unguided():
            self.base(**common, output_type="latent")

    def _unguided(self) -> contextlib.AbstractContextManager:
        """The base pipeline's UNet without the IP-Adapter (once loaded, it would demand image embeddings)."""
        return ip_adapter_bypassed(self.base.unet) if self.guided is not None else contextlib.nullcontext()

    def active_adapters(self, guided: bool) -> dict[str, Any]:
        """What conditioned a frame, for the manifest."""
        active: dict[str, Any] = {}
        if self.lora is not None:
            active["lora"] = {"path": self.lora, "scale": self.lora_scale}
        if guided:
            ip, cn = self.adapters.ip_adapter, self.adapters.controlnet
            active["ip_adapter"] = {"source": f"{ip.repo}/{ip.subfolder}/{ip.weight_name}", "scale": ip.scale}
            active["controlnet"] = {"source": cn.pretrained, "conditioning_scale": cn.conditioning_scale}
        return active


def base_unet_config(model: ModelConfig) -> dict[str, Any]:
    """The base UNet's config without loading weights (materialising a random model first if needed)."""
    from diffusers import UNet2DConditionModel

    if model.random_init is not None and not model.materialise:
        return json.loads((spec_dir(model.random_init) / "unet.json").read_text())
    return dict(UNet2DConditionModel.load_config(resolve_pretrained(model), subfolder="unet"))
