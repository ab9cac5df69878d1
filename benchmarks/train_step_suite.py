"""Training-step benchmark: SDXLLoRAModule under Lightning vs a plain PyTorch loop, and each speed switch.

One model is built once; each variant toggles a switch on it and times `--steps` steps after
`--warmup`, on a fixed synthetic batch (the data pipeline is benchmarked separately). Reported per
variant: seconds per step, samples/s, peak memory and, from a FLOP count of the actual step
(`torch.utils.flop_counter`), model-FLOPs utilisation against `--peak-tflops`.

    python benchmarks/train_step_suite.py --model tiny --device cpu --resolution 64 --rank 8   # anywhere
    python benchmarks/train_step_suite.py --model sdxl_arch --device cuda                       # the seed's recipe on a GPU

The plain loop (the shape of diffusers' SDXL LoRA example: loss -> backward -> clip -> step ->
zero_grad, no framework) runs on the seed-recipe settings in the same process, so
`lightning_over_plain` is the framework's overhead as a ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from aldar_lit.config import LoraConfig, ModelConfig, ObjectiveConfig, OptimConfig
from aldar_lit.models.lora import UNET
from aldar_lit.training.module import SDXLLoRAModule

OPTIMIZERS = {
    "adamw": {"_target_": "torch.optim.AdamW", "_partial_": True},
    "adamw_fused": {"_target_": "torch.optim.AdamW", "_partial_": True, "fused": True},
    "adamw8bit": {"_target_": "bitsandbytes.optim.AdamW8bit", "_partial_": True},
}
CONSTANT = {"_target_": "diffusers.optimization.get_scheduler", "_partial_": True, "name": "constant"}
# name -> switches; applied cumulatively in this order only where noted, otherwise on the seed recipe
VARIANTS: dict[str, dict[str, Any]] = {
    "seed_recipe": {},
    "cached_latents": {"cached_latents": True},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "classic_attention": {"attention": "classic"},
    "channels_last": {"channels_last": True},
    "adamw_fused": {"optimizer": "adamw_fused"},
    "adamw8bit": {"optimizer": "adamw8bit"},
    "text_encoders_frozen": {"train_text_encoders": False},
    "compiled_unet": {"compile": True},  # last: compilation cannot be undone
}


class RepeatedBatch(Dataset):
    def __init__(self, batch: dict[str, Any], length: int):
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batch


class StepTimer(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step, CUDA-synchronised."""

    def __init__(self, warmup: int):
        self.warmup, self.started, self.ended = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _synchronize()
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        _synchronize()
        self.ended = time.perf_counter()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synthetic_batch(batch_size: int, resolution: int, latent_factor: int, cached_latents: bool) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    size = torch.tensor([[resolution, resolution]] * batch_size)
    batch = {
        "index": torch.arange(batch_size),
        "caption": ["aldar_kose_man, a cheerful man in a tall pointed hat, full body, in the steppe"] * batch_size,
        "original_size": size, "crop_top_left": torch.zeros_like(size), "target_size": size,
    }
    if cached_latents:
        side = resolution // latent_factor
        batch["latent_dist"] = torch.randn(batch_size, 8, side, side, generator=generator)
    else:
        batch["pixel_values"] = torch.rand(batch_size, 3, resolution, resolution, generator=generator) * 2 - 1
    return batch


def apply_switches(module: SDXLLoRAModule, switches: dict[str, Any]) -> None:
    unet = module.unet
    if switches.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.set_attn_processor(AttnProcessor() if switches.get("attention") == "classic" else AttnProcessor2_0())
    unet.to(memory_format=torch.channels_last if switches.get("channels_last") else torch.contiguous_format)
    train_te = switches.get("train_text_encoders", True)
    module.lora_cfg.train_text_encoders = train_te
    module.trained_parts = tuple(part for part in ("unet", "text_encoder", "text_encoder_2") if train_te or part == UNET)
    for encoder in (module.text_encoder, module.text_encoder_2):
        for name, param in encoder.named_parameters():
            if "lora_" in name:
                param.requires_grad_(train_te)
    if switches.get("compile"):
        unet.compile()
    module.optim_cfg = OptimConfig(optimizer=OPTIMIZERS[switches.get("optimizer", "adamw")], scheduler=CONSTANT)


def autocast(device: str, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_step_flops(module: SDXLLoRAModule, batch: dict[str, Any], device: str, precision: str) -> int:
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter, autocast(device, precision):
        module.compute_loss(batch, torch.Generator(device).manual_seed(0)).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def plain_seconds_per_step(module, batch, device, precision, warmup, steps) -> float:
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for step in range(warmup + steps):
        if step == warmup:
            _synchronize()
            started = time.perf_counter()
        with autocast(device, precision):
            loss = module.compute_loss(batch, module.sample_generators(batch["index"] + step * len(batch["index"])))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _synchronize()
    return (time.perf_counter() - started) / steps


def lightning_seconds_per_step(module, batch, device, precision, warmup, steps) -> float:
    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator=device, devices=1, precision=precision, max_steps=warmup + steps,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=True, gradient_clip_val=1.0, callbacks=[timer], log_every_n_steps=10)
    trainer.fit(module, train_dataloaders=DataLoader(RepeatedBatch(batch, warmup + steps), batch_size=None))
    return (timer.ended - timer.started) / steps


def peak_memory_bytes() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def build_module(args: argparse.Namespace) -> SDXLLoRAModule:
    spec = {"tiny": "tiny", "sdxl_arch": "sdxl"}[args.model]
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    model = ModelConfig(name=args.model, pretrained=f"random-init:{spec}", random_init=spec, materialise=False,
                        dtype=dtype)
    module = SDXLLoRAModule(model, LoraConfig(rank=args.rank, alpha=float(args.rank)),
                            OptimConfig(optimizer=OPTIMIZERS["adamw"], scheduler=CONSTANT), ObjectiveConfig())
    with torch.device(args.device):  # build the weights where they will live
        module.configure_model()
    return module.to(args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "sdxl_arch"], default="sdxl_arch")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="plain/Lightning pairs on the seed recipe")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    precision = "bf16-mixed" if args.device == "cuda" else "32-true"
    torch.manual_seed(0)

    started = time.perf_counter()
    module = build_module(args)
    latent_factor = 2 ** (len(module.vae.config.block_out_channels) - 1)
    result: dict[str, Any] = {
        "model": args.model, "device": args.device, "precision": precision, "config": {**vars(args), "out": None},
        "hardware": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "lightning": L.__version__,
                     "cuda": torch.version.cuda, "driver": _driver_version()},
        "build_seconds": time.perf_counter() - started, "variants": {},
    }

    recipe = synthetic_batch(args.batch_size, args.resolution, latent_factor, cached_latents=False)
    apply_switches(module, {})
    ours, plain = [], []
    for _ in range(args.repeats):
        plain.append(plain_seconds_per_step(module, recipe, args.device, precision, args.warmup, args.steps))
        ours.append(lightning_seconds_per_step(module, recipe, args.device, precision, args.warmup, args.steps))
    result["plain_s_per_step"] = statistics.median(plain)
    result["lightning_s_per_step"] = statistics.median(ours)
    result["lightning_over_plain"] = result["lightning_s_per_step"] / result["plain_s_per_step"]

    for name in args.variants.split(","):
        switches = VARIANTS[name]
        batch = synthetic_batch(args.batch_size, args.resolution, latent_factor, switches.get("cached_latents", False))
        apply_switches(module, switches)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        flops = count_step_flops(module, batch, args.device, precision)
        seconds = lightning_seconds_per_step(module, batch, args.device, precision, args.warmup, args.steps)
        result["variants"][name] = {
            "switches": switches, "s_per_step": seconds, "samples_per_s": args.batch_size / seconds,
            "step_tflop": flops / 1e12, "mfu": flops / seconds / (args.peak_tflops * 1e12),
            "peak_memory_bytes": peak_memory_bytes(),
        }
        print(json.dumps({name: result["variants"][name]}), flush=True)

    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def _driver_version() -> str | None:
    if not torch.cuda.is_available():
        return None
    import subprocess

    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    return subprocess.run(query, capture_output=True, text=True).stdout.strip() or None


if __name__ == "__main__":
    main()
