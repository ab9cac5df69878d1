"""Training-step benchmark: SDXLLoRAModule under Lightning vs a plain PyTorch loop, and each speed switch.

One model is built once; each variant toggles a switch on it and times `--steps` steps after
`--warmup`, on a fixed synthetic batch (the data pipeline is benchmarked separately). Reported per
variant: seconds per step, samples/s, seconds per 400 steps, peak memory and model-FLOPs
utilisation: the FLOPs of one step counted by `torch.utils.flop_counter` (without gradient
checkpointing's recomputation, which is not model work) over time and `--peak-tflops`; on a GPU
also over the bf16 matrix-product rate measured on the card. Also per variant: the seconds of the
warm-up steps (compilation included), the activation memory one step keeps for its backward pass
(any device; `SavedActivations`) and the aten operators one eager step dispatches.

    python benchmarks/train_step_suite.py --model tiny --device cpu --resolution 64 --rank 8   # anywhere
    python benchmarks/train_step_suite.py --model sdxl_arch --device cuda                       # the recipe on a GPU
    python benchmarks/train_step_suite.py --model sdxl_arch --device cpu --precision bf16-mixed \
        --batch-size 1 --resolution 128 --repeats 0 --variants ...   # full size on a CPU: ~15 GB

The plain loop (the shape of diffusers' SDXL LoRA example: loss -> backward -> clip -> step ->
zero_grad, no framework) runs on the recipe's settings (the technical justification's) in the same process, so
`lightning_over_plain` is the framework's overhead as a ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import diffusers
import lightning as L
import peft
import torch
import transformers
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader, Dataset
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from aldar_lit.atomic_write import write_json
from aldar_lit.config import LoraConfig, ModelConfig, ObjectiveConfig, OptimConfig
from aldar_lit.models.compilation import repeated_blocks, set_activation_memory_budget
from aldar_lit.models.lora import UNET
from aldar_lit.training.module import SDXLLoRAModule
from saved_activations import SavedActivations

OPTIMIZERS = {
    "adamw": {"_target_": "torch.optim.AdamW", "_partial_": True},
    "adamw_fused": {"_target_": "torch.optim.AdamW", "_partial_": True, "fused": True},
    "adamw8bit": {"_target_": "bitsandbytes.optim.AdamW8bit", "_partial_": True},
}
CONSTANT = {"_target_": "diffusers.optimization.get_scheduler", "_partial_": True, "name": "constant"}
# name -> switches on top of the technical justification's recipe
VARIANTS: dict[str, dict[str, Any]] = {
    "seed_recipe": {},
    "cached_latents": {"cached_latents": True},
    "gradient_checkpointing": {"gradient_checkpointing": True},
    "classic_attention": {"attention": "classic"},
    "channels_last": {"channels_last": True},
    "cudnn_benchmark": {"cudnn_benchmark": True},
    # Lightning refuses gradient clipping with a fused optimizer under mixed precision, so this one runs unclipped
    "adamw_fused": {"optimizer": "adamw_fused", "gradient_clip_val": None},
    "adamw8bit": {"optimizer": "adamw8bit"},
    "text_encoders_frozen": {"train_text_encoders": False},
    "lean_memory": {"cached_latents": True, "gradient_checkpointing": True, "optimizer": "adamw8bit"},
    # twice the samples per step: if the step barely slows down, it is bound by per-operator host cost
    "double_batch": {"batch_size_factor": 2},
    # model.compile_unet_scope: the whole UNet, or (diffusers' regional compilation, the default) each of its
    # 70 transformer blocks with the rest eager
    "compiled_unet": {"compile": True, "compile_scope": "unet"},
    "compiled_unet_blocks": {"compile": True, "compile_scope": "blocks"},
    "compiled_all": {"compile": True, "compile_scope": "blocks", "compile_text_encoders": True},
    "fastest": {"compile": True, "compile_scope": "blocks", "compile_text_encoders": True, "cached_latents": True},
    "compiled_all_cudagraphs": {"compile": True, "compile_scope": "blocks", "compile_text_encoders": True,
                                "compile_mode": "reduce-overhead"},
    # model.activation_memory_budget: the compiler keeps half the blocks' activations and recomputes the rest
    "compiled_unet_blocks_half_memory": {"compile": True, "compile_scope": "blocks", "activation_memory_budget": 0.5},
}
# switches that change how a step is computed but not the model FLOPs it does (MFU counts useful work only:
# gradient checkpointing's recomputation is not model FLOPs)
SAME_WORK = ("gradient_checkpointing", "attention", "channels_last", "cudnn_benchmark", "optimizer", "compile",
             "compile_scope", "compile_text_encoders", "compile_mode", "activation_memory_budget", "gradient_clip_val")


class RepeatedBatch(Dataset):
    def __init__(self, batch: dict[str, Any], length: int):
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batch


class StepTimer(L.Callback):
    """Wall time of the warm-up steps (compilation included) and from the start of step `warmup` to the
    end of the last step.

    The GPU is synchronised at those two points only, as in the plain loop: a synchronisation after
    every step would stop the host from queueing the next step while the GPU works (on the H200 that
    made the Lightning loop look 14% slower than the plain one).
    """

    def __init__(self, warmup: int):
        self.warmup, self.first_started, self.started, self.ended = warmup, 0.0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.first_started = time.perf_counter()
        if trainer.global_step == self.warmup:
            _synchronize()
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= trainer.max_steps:
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
    # change only what differs: replacing processors or re-laying out weights would make a compiled UNet recompile
    processor = AttnProcessor if switches.get("attention") == "classic" else AttnProcessor2_0
    if any(type(p) is not processor for p in unet.attn_processors.values()):
        unet.set_attn_processor(processor())
    channels_last = bool(switches.get("channels_last"))
    if unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last) != channels_last:
        unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    train_te = switches.get("train_text_encoders", True)
    module.lora_cfg.train_text_encoders = train_te
    module.trained_parts = tuple(part for part in ("unet", "text_encoder", "text_encoder_2") if train_te or part == UNET)
    for encoder in (module.text_encoder, module.text_encoder_2):
        for name, param in encoder.named_parameters():
            if "lora_" in name:
                param.requires_grad_(train_te)
    set_activation_memory_budget(switches.get("activation_memory_budget", 1.0))
    blocks = repeated_blocks(unet)
    regional = switches.get("compile_scope") == "blocks"
    compiled = {unet: switches.get("compile") and not regional,
                **{block: switches.get("compile") and regional for block in blocks},
                module.text_encoder: switches.get("compile_text_encoders"),
                module.text_encoder_2: switches.get("compile_text_encoders")}
    for part, wanted in compiled.items():
        set_compiled(part, bool(wanted), switches.get("compile_mode"))
    module.optim_cfg = OptimConfig(optimizer=OPTIMIZERS[switches.get("optimizer", "adamw")], scheduler=CONSTANT)


def set_compiled(part: torch.nn.Module, wanted: bool, mode: str | None) -> None:
    """Compile `part` in place with `mode`, or undo it; its compiled wrapper is kept for reuse (the code it
    compiled is dropped only by a new activation-memory budget)."""
    if not wanted:
        part._compiled_call_impl = None  # what nn.Module.compile sets; None is plain eager
        return
    if getattr(part, "suite_compiled", None) is None or part.suite_compile_mode != mode:
        part.compile(mode=mode)
        part.suite_compiled, part.suite_compile_mode = part._compiled_call_impl, mode
    part._compiled_call_impl = part.suite_compiled


def work_signature(switches: dict[str, Any]) -> dict[str, Any]:
    """The switches that change the model FLOPs of a step."""
    return {k: v for k, v in switches.items() if k not in SAME_WORK}


def autocast(device: str, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_loss(module: SDXLLoRAModule, batch: dict[str, Any], device: str, precision: str,
              step: int = 0) -> torch.Tensor:
    """One step's loss on a batch already on the device."""
    with autocast(device, precision):
        return module.compute_loss(batch, module.sample_generators(batch["index"] + step * len(batch["index"])))


def forward_backward(module: SDXLLoRAModule, batch: dict[str, Any], device: str, precision: str, step: int = 0) -> None:
    """One step's loss and gradients (no optimizer)."""
    step_loss(module, batch, device, precision, step).backward()


class OperatorCounter(TorchDispatchMode):
    """Counts the aten operators a step dispatches, by phase, and those the forward pass runs inside the
    UNet's repeated transformer blocks. In eager mode every operator costs host time however small its
    kernel, so this count (the same on any device) is what a host-bound step's time follows."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.blocks = repeated_blocks(unet)
        self.counts: Counter[str] = Counter()
        self.phase, self.block_depth = "forward", 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.phase] += 1
        if self.block_depth:
            self.counts["forward_in_repeated_blocks"] += 1
        return func(*args, **(kwargs or {}))

    def _enter_block(self, *_: Any) -> None:
        self.block_depth += 1

    def _leave_block(self, *_: Any) -> None:
        self.block_depth -= 1

    @contextlib.contextmanager
    def hooks(self):
        handles = [h for b in self.blocks for h in (b.register_forward_pre_hook(self._enter_block),
                                                     b.register_forward_hook(self._leave_block))]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def saved_activation_bytes(module: SDXLLoRAModule, batch: dict[str, Any], device: str, precision: str) -> int:
    """What one forward pass keeps for the backward (see `SavedActivations`)."""
    batch = module.transfer_batch_to_device(batch, torch.device(device), 0)
    with SavedActivations(module) as saved:
        loss = step_loss(module, batch, device, precision)
    loss.backward()
    module.zero_grad(set_to_none=True)
    return saved.bytes


def count_step_work(module: SDXLLoRAModule, batch: dict[str, Any], device: str, precision: str) -> dict[str, Any]:
    """The model FLOPs of one forward + backward and the operators it dispatches."""
    batch = module.transfer_batch_to_device(batch, torch.device(device), 0)
    operators = OperatorCounter(module.unet)
    with FlopCounterMode(display=False) as flops, operators, operators.hooks():
        loss = step_loss(module, batch, device, precision)
        operators.phase = "backward"
        loss.backward()
    module.zero_grad(set_to_none=True)
    return {"flops": flops.get_total_flops(), "operators": dict(operators.counts)}


def batches(batch: dict[str, Any], count: int, device: str) -> DataLoader:
    """The same batch `count` times, through a DataLoader that pins memory on CUDA as the training data does:
    both loops below copy it to the device every step."""
    return DataLoader(RepeatedBatch(batch, count), batch_size=None, pin_memory=device == "cuda")


def plain_seconds_per_step(module, batch, device, precision, warmup, steps) -> float:
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for step, host_batch in enumerate(batches(batch, warmup + steps, device)):
        if step == warmup:
            _synchronize()
            started = time.perf_counter()
        forward_backward(module, module.transfer_batch_to_device(host_batch, torch.device(device), 0), device,
                         precision, step)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _synchronize()
    return (time.perf_counter() - started) / steps


def lightning_seconds(module, batch, device, precision, warmup, steps, cudnn_benchmark=False,
                      gradient_clip_val: float | None = 1.0) -> tuple[float, float]:
    """Seconds per timed step, and the seconds of all warm-up steps together."""
    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator=device, devices=1, precision=precision, max_steps=warmup + steps,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, gradient_clip_val=gradient_clip_val, callbacks=[timer],
                        log_every_n_steps=10, benchmark=cudnn_benchmark)
    trainer.fit(module, train_dataloaders=batches(batch, warmup + steps, device))
    module.to(device)  # Lightning's teardown moved the model to the CPU
    return (timer.ended - timer.started) / steps, timer.started - timer.first_started


def profile_step(module, batch, device, precision, top: int = 20) -> dict[str, Any]:
    """Where a step's time goes: wall time, GPU kernel time (its ratio to wall time is how busy the GPU
    is) and the `top` operators by the time of the work they launch themselves, per step."""
    batch = module.transfer_batch_to_device(batch, torch.device(device), 0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    steps = 2
    with profile(activities=activities) as profiler:
        started = time.perf_counter()
        for step in range(steps):
            forward_backward(module, batch, device, precision, step)
        _synchronize()
        wall = time.perf_counter() - started
    module.zero_grad(set_to_none=True)
    attribute = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    rows = profiler.key_averages()
    operators = [e for e in rows if e.device_type == DeviceType.CPU and getattr(e, attribute) > 0]
    total = sum(getattr(e, attribute) for e in operators)
    operators.sort(key=lambda e: getattr(e, attribute), reverse=True)
    kernels_us = sum(e.self_device_time_total for e in rows if e.device_type == DeviceType.CUDA)
    return {
        "wall_ms_per_step": wall * 1e3 / steps,  # under the profiler, so slower than unprofiled steps
        "gpu_kernel_ms_per_step": kernels_us / 1e3 / steps if device == "cuda" else None,
        "operators": [{"op": e.key, "ms_per_step": getattr(e, attribute) / 1e3 / steps,
                       "share": getattr(e, attribute) / total, "calls_per_step": e.count / steps}
                      for e in operators[:top]],
    }


def host_syncs(module, batch, device, precision) -> dict[str, Any] | None:
    """The operations of one forward + backward that make the host wait for the GPU, by source line."""
    if device != "cuda":
        return None
    batch = module.transfer_batch_to_device(batch, torch.device(device), 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            forward_backward(module, batch, device, precision)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    module.zero_grad(set_to_none=True)
    sites = Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return {"count": sum(sites.values()), "sites": dict(sites.most_common(10))}


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> dict[str, int | None]:
    if not torch.cuda.is_available():
        return {"peak_allocated_bytes": None, "peak_reserved_bytes": None}
    return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved()}


def measured_matmul_tflops(device: str) -> float | None:
    """The dense bf16 rate this GPU reaches on a large random matrix product: the practical MFU ceiling."""
    if device != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(13):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times) / 1e12


def build_module(model_name: str, rank: int, device: str, dtype: str) -> SDXLLoRAModule:
    """The module with `model_name`'s architecture and random weights: frozen weights in `dtype`, LoRA in fp32."""
    spec = {"tiny": "tiny", "sdxl_arch": "sdxl"}[model_name]
    model = ModelConfig(name=model_name, pretrained=f"random-init:{spec}", random_init=spec, materialise=False,
                        dtype=dtype)
    module = SDXLLoRAModule(model, LoraConfig(rank=rank, alpha=float(rank)),
                            OptimConfig(optimizer=OPTIMIZERS["adamw"], scheduler=CONSTANT), ObjectiveConfig())
    with torch.device(device):  # build the weights where they will live
        module.configure_model()
    return module.to(device)


def run_variant(module, args, precision, latent_factor, switches, step_work) -> dict[str, Any]:
    batch_size = args.batch_size * switches.get("batch_size_factor", 1)
    batch = synthetic_batch(batch_size, args.resolution, latent_factor, switches.get("cached_latents", False))
    apply_switches(module, switches)
    reset_peak_memory()
    seconds, warmup_seconds = lightning_seconds(module, batch, args.device, precision, args.warmup, args.steps,
                                                cudnn_benchmark=switches.get("cudnn_benchmark", False),
                                                gradient_clip_val=switches.get("gradient_clip_val", 1.0))
    work = step_work.get(json.dumps(work_signature(switches), sort_keys=True))
    row = {"switches": switches, "s_per_step": seconds, "samples_per_s": batch_size / seconds,
           "seconds_per_400_steps": 400 * seconds, "warmup_seconds": warmup_seconds, **peak_memory_bytes(),
           "saved_activation_bytes": saved_activation_bytes(module, batch, args.device, precision)}
    if work is not None:
        flops = work["flops"]
        row |= {"model_tflop_per_step": flops / 1e12, "mfu": flops / seconds / (args.peak_tflops * 1e12),
                "eager_operators_per_step": work["operators"]}
        if args.measured_tflops:
            row["fraction_of_measured_matmul_rate"] = flops / seconds / (args.measured_tflops * 1e12)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "sdxl_arch"], default="sdxl_arch")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="plain/Lightning pairs on the recipe (0: none)")
    parser.add_argument("--precision", choices=["bf16-mixed", "32-true"],
                        help="default: bf16-mixed on CUDA (the recipe's), 32-true on the CPU (faster there)")
    parser.add_argument("--variants", default="all", help=f"comma-separated, or all: {','.join(VARIANTS)}")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 datasheet peak (H100/H200 SXM)")
    parser.add_argument("--profile", action="store_true",
                        help="record the recipe's most expensive operators and, on CUDA, its host syncs")
    parser.add_argument("--out", type=Path, help="JSON results, rewritten (atomically) after every variant")
    args = parser.parse_args()
    if args.variants == "all":
        args.variants = ",".join(VARIANTS)
    unknown = set(args.variants.split(",")) - VARIANTS.keys()
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    torch.manual_seed(0)

    started = time.perf_counter()
    module = build_module(args.model, args.rank, args.device, "bfloat16" if precision == "bf16-mixed" else "float32")
    latent_factor = 2 ** (len(module.vae.config.block_out_channels) - 1)
    args.measured_tflops = measured_matmul_tflops(args.device)
    result: dict[str, Any] = {
        "model": args.model, "device": args.device, "precision": precision,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "hardware": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "measured_bf16_matmul_tflops": args.measured_tflops,
        "versions": {"torch": torch.__version__, "lightning": L.__version__, "cuda": torch.version.cuda,
                     "driver": _driver_version(), "diffusers": diffusers.__version__, "peft": peft.__version__,
                     "transformers": transformers.__version__},
        "build_seconds": time.perf_counter() - started, "variants": {},
    }

    def save() -> None:
        if args.out:
            write_json(args.out, result)

    names = args.variants.split(",")
    step_work: dict[str, dict[str, Any]] = {}  # work signature -> FLOPs and operators, counted in eager mode
    for name in names:
        work = work_signature(VARIANTS[name])
        key = json.dumps(work, sort_keys=True)
        if key not in step_work:
            apply_switches(module, work)
            batch = synthetic_batch(args.batch_size * work.get("batch_size_factor", 1), args.resolution,
                                    latent_factor, work.get("cached_latents", False))
            try:
                step_work[key] = count_step_work(module, batch, args.device, precision)
            except torch.OutOfMemoryError:  # the variant itself will record the error
                module.zero_grad(set_to_none=True)
                reset_peak_memory()

    recipe = synthetic_batch(args.batch_size, args.resolution, latent_factor, cached_latents=False)
    apply_switches(module, {})
    ours, plain = [], []
    for _ in range(args.repeats):
        plain.append(plain_seconds_per_step(module, recipe, args.device, precision, args.warmup, args.steps))
        ours.append(lightning_seconds(module, recipe, args.device, precision, args.warmup, args.steps)[0])
    if args.repeats:
        result["plain_s_per_step"] = statistics.median(plain)
        result["lightning_s_per_step"] = statistics.median(ours)
        result["lightning_over_plain"] = result["lightning_s_per_step"] / result["plain_s_per_step"]
        print(json.dumps({k: result[k] for k in ("plain_s_per_step", "lightning_s_per_step", "lightning_over_plain")}),
              flush=True)
        save()
    if args.profile:
        result["seed_recipe_profile"] = profile_step(module, recipe, args.device, precision)
        result["seed_recipe_host_syncs"] = host_syncs(module, recipe, args.device, precision)
        save()

    for name in names:
        try:
            result["variants"][name] = run_variant(module, args, precision, latent_factor, VARIANTS[name], step_work)
        except Exception as error:  # noqa: BLE001 - one failing switch (OOM, a compiler error) must not lose the rest
            result["variants"][name] = {"switches": VARIANTS[name], "error": f"{type(error).__name__}: {error}"[:2000]}
            module.zero_grad(set_to_none=True)
            reset_peak_memory()
        print(json.dumps({name: result["variants"][name]}), flush=True)
        save()
    print(summary_table(result))


def summary_table(result: dict[str, Any]) -> str:
    lines = [f"{result['hardware']}: Lightning/plain = {result.get('lightning_over_plain', float('nan')):.3f}",
             f"{'variant':34s} {'s/step':>8s} {'400 steps':>10s} {'MFU':>6s} {'peak GiB':>9s} {'saved GiB':>9s} "
             f"{'warm-up':>8s}"]
    for name, row in result["variants"].items():
        if "error" in row:
            lines.append(f"{name:34s} {row['error'][:80]}")
            continue
        peak, mfu = row["peak_allocated_bytes"], row.get("mfu", float("nan"))
        lines.append(f"{name:34s} {row['s_per_step']:8.3f} {row['seconds_per_400_steps']:9.0f}s {mfu:6.1%} "
                     f"{peak / 2**30 if peak else float('nan'):9.1f} {row['saved_activation_bytes'] / 2**30:9.2f} "
                     f"{row['warmup_seconds']:7.1f}s")
    return "\n".join(lines)


def _driver_version() -> str | None:
    if not torch.cuda.is_available():
        return None
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    return subprocess.run(query, capture_output=True, text=True).stdout.strip() or None


if __name__ == "__main__":
    main()
