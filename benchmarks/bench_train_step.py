"""Training-step time of SDXLLoRAModule under Lightning vs a minimal plain-PyTorch loop doing the same work.

Same tiny SDXL, same LoRA, same data, same loss function, optimizer and schedule; the plain loop is
the shape of diffusers' SDXL LoRA example (dataloader -> loss -> backward -> clip -> step -> zero_grad).
The ratio is Lightning's overhead per step.  Usage:

    python benchmarks/bench_train_step.py --steps 60 --warmup 10 --repeats 3 --out benchmarks/results/train_step_tiny_cpu.json
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
from aldar_lit.data.demo_character import generate_demo_dataset
from aldar_lit.training.module import SDXLLoRAModule

OPTIM = OptimConfig(
    optimizer={"_target_": "torch.optim.AdamW", "_partial_": True},
    scheduler={"_target_": "diffusers.optimization.get_scheduler", "_partial_": True, "name": "constant"},
)


class StepTimer(L.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.started, self.ended = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.ended = time.perf_counter()


def make_module(model: ModelConfig, rank: int) -> SDXLLoRAModule:
    return SDXLLoRAModule(model, LoraConfig(rank=rank, alpha=float(rank)), OPTIM, ObjectiveConfig(), seed=0)


def lightning_seconds_per_step(model, data, rank, steps, warmup) -> float:
    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps + warmup, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[timer], gradient_clip_val=1.0, log_every_n_steps=10)
    trainer.fit(make_module(model, rank), datamodule=data)
    return (timer.ended - timer.started) / steps


def plain_seconds_per_step(model, data, rank, steps, warmup) -> float:
    module = make_module(model, rank)
    module.configure_model()
    module.train()
    groups = [{"params": [p for p in m.parameters() if p.requires_grad], "lr": lr}
              for m, lr in zip(module.trained_modules().values(), (1e-4, 5e-5, 5e-5))]
    optimizer = torch.optim.AdamW(groups)
    params = [p for g in groups for p in g["params"]]
    step, started = 0, 0.0
    while step < steps + warmup:
        for batch in data.train_dataloader():
            if step == warmup:
                started = time.perf_counter()
            loss = module.compute_loss(batch, torch.Generator().manual_seed(step))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == steps + warmup:
                break
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    model = ModelConfig(name="tiny", pretrained=str(workdir / "tiny"), random_init="tiny")
    root = generate_demo_dataset(workdir / "demo", num_images=16, size=128, seed=0)
    data = CaptionedImageDataModule(DataConfig(root=str(root), resolution=args.resolution,
                                               batch_size=args.batch_size, num_workers=0))
    data.setup()
    ours, plain = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        ours.append(lightning_seconds_per_step(model, data, args.rank, args.steps, args.warmup))
        plain.append(plain_seconds_per_step(model, data, args.rank, args.steps, args.warmup))
    result = {
        "benchmark": "train_step_tiny",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "config": vars(args) | {"out": str(args.out) if args.out else None},
        "lightning_s_per_step": statistics.median(ours),
        "plain_s_per_step": statistics.median(plain),
        "ratio_lightning_over_plain": statistics.median(ours) / statistics.median(plain),
        "all_lightning": ours,
        "all_plain": plain,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
