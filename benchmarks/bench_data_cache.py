"""Epoch time of LoRA training on the tiny SDXL with and without the latent and text-embedding caches.

All modes train the same thing (UNet LoRA, frozen text encoders, same images, seed and steps); they
differ only in where the latents and prompt embeddings come from: decoded + VAE-encoded / text-encoded
every step, or read from the on-disk caches. Modes run interleaved `--repeats` times and the fastest
epoch of each mode counts (the least disturbed by other load on a shared machine); epoch 0 of each fit
is left out (warm-up), and the one-off cost of filling the caches shows in `startup_seconds`.  Usage:

    python benchmarks/bench_data_cache.py --images 32 --size 512 --epochs 3 --repeats 3 --threads 1 \
        --out benchmarks/results/data_cache_tiny_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from aldar_lit.config import DataConfig, LoraConfig, ModelConfig, ObjectiveConfig, OptimConfig
from aldar_lit.data.datamodule import CaptionedImageDataModule
from aldar_lit.offline.demo_character import generate_demo_dataset
from aldar_lit.offline.random_init import materialise_random_sdxl
from aldar_lit.training.module import SDXLLoRAModule

OPTIM = OptimConfig(
    optimizer={"_target_": "torch.optim.AdamW", "_partial_": True},
    scheduler={"_target_": "diffusers.optimization.get_scheduler", "_partial_": True, "name": "constant"},
)
MODES = {"no_cache": (False, False), "latent_cache": (True, False), "latent_and_text_cache": (True, True)}


class EpochTimer(L.Callback):
    def __init__(self, fit_started: float):
        self.fit_started, self.startup, self.epochs, self._epoch_started = fit_started, 0.0, [], 0.0

    def on_train_start(self, trainer, module) -> None:
        self.startup = time.perf_counter() - self.fit_started  # model load + data scan + cache fill

    def on_train_epoch_start(self, trainer, module) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epochs.append(time.perf_counter() - self._epoch_started)


def run_mode(model: ModelConfig, root: Path, cache_dir: Path, latents: bool, text: bool, args) -> dict:
    data = CaptionedImageDataModule(DataConfig(
        root=str(root), resolution=args.resolution, bucket_multiple=8, batch_size=args.batch_size, num_workers=0,
        cache_latents=latents, cache_text_embeddings=text, cache_dir=str(cache_dir)))
    module = SDXLLoRAModule(model, LoraConfig(rank=8, alpha=8.0, train_text_encoders=False), OPTIM,
                            ObjectiveConfig(), seed=0)
    timer = EpochTimer(time.perf_counter())
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.epochs, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, callbacks=[timer])
    trainer.fit(module, datamodule=data)
    return {"startup_seconds": round(timer.startup, 3), "epoch_seconds": [round(t, 3) for t in timer.epochs[1:]],
            "steps_per_epoch": len(data.train_dataloader())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=512, help="side of the generated source images")
    parser.add_argument("--resolution", type=int, default=64, help="training resolution (data.resolution)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = materialise_random_sdxl("tiny", 0, tmp / "tiny")
        model = ModelConfig(name="tiny", pretrained=str(model_dir), random_init="tiny")
        root = generate_demo_dataset(tmp / "data", num_images=args.images, size=args.size, seed=0)
        L.seed_everything(0)
        runs = {name: [] for name in MODES}
        for repeat in range(args.repeats):
            for name, flags in MODES.items():  # the first repeat's cached modes fill the caches (cold start)
                runs[name].append(run_mode(model, root, tmp / "cache", *flags, args))

    results = {}
    for name, fits in runs.items():
        epochs = [t for fit in fits for t in fit["epoch_seconds"]]
        results[name] = {"best_epoch_seconds": min(epochs), "median_epoch_seconds": round(statistics.median(epochs), 3),
                         "steps_per_epoch": fits[0]["steps_per_epoch"],
                         "startup_seconds": [fit["startup_seconds"] for fit in fits], "epoch_seconds": epochs}
    base = results["no_cache"]["best_epoch_seconds"]
    ratios = {f"{name}_speedup": round(base / r["best_epoch_seconds"], 3) for name, r in results.items()
              if name != "no_cache"}
    payload = {"benchmark": "data_cache", "model": "tiny", "device": "cpu", "torch_threads": torch.get_num_threads(),
               "platform": platform.platform(), "torch": torch.__version__,
               "args": {k: str(v) for k, v in vars(args).items()}, "modes": results, **ratios}
    for name, r in results.items():
        print(f"{name:24s} best epoch {r['best_epoch_seconds']:.3f} s, median {r['median_epoch_seconds']:.3f} s "
              f"({r['steps_per_epoch']} steps); startup per fit {r['startup_seconds']} s")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x (no-cache best epoch time / cached best epoch time)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
