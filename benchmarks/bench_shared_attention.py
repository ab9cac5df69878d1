"""Cost of consistent self-attention (consistency.shared_attention) against the anchor group size.

For each group size g the anchor group is denoised once as one batch (the recording pass, which keeps the
sampled tokens), then frames are generated one by one reading them; "plain" is the same frame without
sharing. Reported per g: seconds of the recording pass, seconds per frame (median, the frame reading all g
anchors) and plain (timed in alternation, their ratio the median of the pairs' ratios), the kept tokens' bytes, the peak bytes torch holds during the recording pass and
during a frame (above what it held before the call, so the recording pass's figure includes the tokens it
keeps and a frame's does not), and the cost per frame of a storyboard of --frames frames:
(recording + frames x shared frame) / frames over the plain frame.
Usage:

    python benchmarks/bench_shared_attention.py --model tiny --size 64 --steps 30 --groups 1,2,3,4
    python benchmarks/bench_shared_attention.py --model sdxl_arch --size 256 --steps 2 --groups 1,2,3 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from aldar_lit.config import ModelConfig
from aldar_lit.offline.random_init import materialise_random_sdxl
from aldar_lit.config.infer import AdaptersConfig, ConsistencyConfig, LoraSourceConfig
from aldar_lit.pipelines.generator import StoryboardGenerator
from aldar_lit.pipelines.shared_attention import SharedFrame, SharedTokens
from aldar_lit.pipelines.retry_policy import Settings

PROMPT = "aldar_kose_man walking across the golden steppe, 3d render"


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def peak_allocated_bytes(call: Callable[[], Any]) -> int:
    """The most bytes torch held at once during `call` above its start: the profiler's allocation and free events
    (its own timing overhead is why this is a separate, untimed call). Frees of memory allocated before the call
    are not among the events, which can only raise the figure."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, change in events:
        held += change
        peak = max(peak, held)
    return peak


def model_config(name: str) -> ModelConfig:
    if name == "tiny":
        cache = Path(os.environ.get("ALDAR_LIT_CACHE", "~/.cache/aldar_lit")).expanduser()
        model_dir = materialise_random_sdxl("tiny", 0, cache / "models" / "tiny-sdxl-seed0")
        return ModelConfig(name="tiny", pretrained=str(model_dir), random_init="tiny")
    return ModelConfig(name="sdxl_arch", pretrained="random-init:sdxl", random_init="sdxl", materialise=False,
                       dtype="bfloat16", vae_dtype="float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "sdxl_arch"], default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--groups", default="1,2,3,4")
    parser.add_argument("--repeats", type=int, default=3, help="timed frames per variant (after one warm-up)")
    parser.add_argument("--frames", type=int, default=6, help="storyboard length for the amortised cost")
    parser.add_argument("--sample-rate", type=float, default=0.5)
    parser.add_argument("--layers", default="up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()
    out = args.out or Path(f"benchmarks/results/shared_attention_{args.model}_cpu.json")

    generator = StoryboardGenerator(model_config(args.model), LoraSourceConfig(), AdaptersConfig(), "cpu")
    settings = [Settings(seed, 7.5) for seed in range(max(int(g) for g in args.groups.split(",")) + 1)]

    def frame(seed: int, shared: SharedFrame | None) -> Callable[[], Any]:
        return lambda: generator.generate(PROMPT, "", Settings(seed, 7.5), args.size, args.size, args.steps,
                                          shared=shared)

    plain_peak = peak_allocated_bytes(frame(0, None))  # also the warm-up
    rows = []
    for group in (int(g) for g in args.groups.split(",")):
        consistency = ConsistencyConfig(shared_attention=True, sample_rate=args.sample_rate,
                                        layers=args.layers.split(","), group_size=group)
        tokens = SharedTokens(consistency, [s.seed for s in settings[:group]], args.steps)

        def record(tokens: SharedTokens = tokens, group: int = group) -> None:
            generator.record_shared_tokens(tokens, [PROMPT] * group, "", settings[:group], args.size, args.size,
                                           args.steps)

        record_seconds = timed(record)
        record_peak = peak_allocated_bytes(record)
        later = SharedFrame(tokens, group)  # the first frame after the anchor group: reads all g anchors
        frame_peak = peak_allocated_bytes(frame(0, later))  # also the warm-up
        pairs = [(timed(frame(100 + i, None)), timed(frame(100 + i, later))) for i in range(args.repeats)]
        plain_seconds = statistics.median(plain for plain, _ in pairs)
        frame_seconds = statistics.median(shared for _, shared in pairs)
        rows.append({
            "group_size": group, "record_seconds": record_seconds, "record_peak_bytes": record_peak,
            "plain_frame_seconds": plain_seconds, "frame_seconds": frame_seconds,
            "frame_over_plain": statistics.median(shared / plain for plain, shared in pairs),
            "frame_peak_bytes": frame_peak, "frame_peak_over_plain": frame_peak / plain_peak,
            "kept_bytes": tokens.nbytes(),
            "storyboard_cost_per_frame_over_plain":
                (record_seconds + args.frames * frame_seconds) / (args.frames * plain_seconds),
        })
        print(json.dumps(rows[-1]))
    result = {
        "benchmark": "shared_attention_cost", "model": args.model, "size": args.size, "steps": args.steps,
        "sample_rate": args.sample_rate, "layers": args.layers.split(","), "storyboard_frames": args.frames,
        "unet_dtype": str(generator.base.unet.dtype),
        "plain_frame_peak_bytes": plain_peak, "groups": rows,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "command": "python benchmarks/bench_shared_attention.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
