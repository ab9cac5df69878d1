"""Per-frame cost of storyboard QA without retries vs a bare diffusers pipeline call, on the tiny model.

"ours" is one frame of `Storyboard.make_frame` with QA on and max_attempts=1: the same pipeline call,
plus CLIP-T scoring, face detection, the PNG with its metadata and the manifest rewrite. "bare" is
the base `StableDiffusionXLPipeline` call alone, with the same prompt, size, steps and seed. Calls
are interleaved and the median of each is compared. Usage:

    python benchmarks/bench_storyboard_qa.py --frames 10 --steps 30 --out benchmarks/results/storyboard_qa_tiny_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from aldar_lit.config import ClipConfig, ModelConfig, PathsConfig
from aldar_lit.offline.random_init import materialise_random_sdxl
from aldar_lit.config.infer import GenerationConfig, InferConfig, QAConfig, StoryConfig
from aldar_lit.pipelines.generator import StoryboardGenerator
from aldar_lit.pipelines.story import Scene
from aldar_lit.pipelines.storyboard import FramePlan, Storyboard, StoryboardRecord
from aldar_lit.quality.faces import build_face_detector
from aldar_lit.quality.frame_qa import FrameQA
from aldar_lit.pipelines.retry_policy import Settings

PROMPT = "aldar_kose_man walking across the golden steppe, 3d render"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/storyboard_qa_tiny_cpu.json"))
    args = parser.parse_args()

    cache = Path(os.environ.get("ALDAR_LIT_CACHE", "~/.cache/aldar_lit")).expanduser()
    model_dir = materialise_random_sdxl("tiny", 0, cache / "models" / "tiny-sdxl-seed0")
    model = ModelConfig(name="tiny", pretrained=str(model_dir), random_init="tiny")
    qa_cfg = QAConfig(max_attempts=1, prompt_threshold=-1.0, identity_threshold=-1.0,
                      clip=ClipConfig(model_name="aldar-tiny-clip", pretrained=None))
    config = InferConfig(model=model, mode="baseline", story=StoryConfig(file="unused.yaml"), qa=qa_cfg,
                         generation=GenerationConfig(width=args.size, height=args.size, steps=args.steps),
                         paths=PathsConfig(cache_dir=str(cache)), progress=False)
    generator = StoryboardGenerator(model, config.lora, config.adapters, "cpu")
    face_detector = build_face_detector(qa_cfg.detectors)
    qa = FrameQA(qa_cfg, "cpu", face_detector)
    out_dir = Path(tempfile.mkdtemp(prefix="bench_storyboard_"))
    record = StoryboardRecord(out_dir, config, args.frames + args.warmup)
    storyboard = Storyboard(config, generator, qa, face_detector, record)

    def bare(seed: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            generator.base(prompt=PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps,
                           guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed))
        return time.perf_counter() - started

    def ours(index: int, seed: int) -> float:
        plan = FramePlan(index=index, scene=Scene(PROMPT), prompt=PROMPT, settings=Settings(seed, 7.5), pose=None)
        started = time.perf_counter()
        storyboard.make_frame(plan)
        return time.perf_counter() - started

    bare_times, our_times = [], []
    for i in range(args.warmup + args.frames):
        b, o = bare(i), ours(i + 2, i)  # frame index 1 would become the identity anchor; keep it constant
        if i >= args.warmup:
            bare_times.append(b)
            our_times.append(o)
    measured = record.manifest.frames[args.warmup:]
    qa_seconds = [f["attempts"][0]["seconds"]["qa"] for f in measured]
    paired = [f["seconds"] / f["attempts"][0]["seconds"]["generate"] for f in measured]
    result = {
        "benchmark": "storyboard_qa_overhead",
        "model": "tiny",
        "size": args.size,
        "steps": args.steps,
        "frames": args.frames,
        "bare_seconds_median": statistics.median(bare_times),
        "ours_seconds_median": statistics.median(our_times),
        "qa_seconds_median": statistics.median(qa_seconds),
        "bare_seconds_min": min(bare_times),
        "ours_seconds_min": min(our_times),
        "ratio": statistics.median(our_times) / statistics.median(bare_times),
        "ratio_of_minima": min(our_times) / min(bare_times),
        "paired_ratio_median": statistics.median(paired),
        "target_ratio": 1.15,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "command": "python benchmarks/bench_storyboard_qa.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out)
    print(f"bare pipeline call {result['bare_seconds_median']:.3f} s/frame, storyboard frame with QA "
          f"{result['ours_seconds_median']:.3f} s/frame (QA itself {result['qa_seconds_median']:.3f} s): "
          f"ratio {result['ratio']:.3f} (of minima {result['ratio_of_minima']:.3f}; target <= 1.15); "
          f"paired within-frame ratio {result['paired_ratio_median']:.3f}")


if __name__ == "__main__":
    main()
