"""`infer.py`'s body: story -> scenes -> frames with QA and auto-fix -> frames/, storyboard.png/.html, manifest.json.

Everything that can be checked without a model (story, poses, adapter files and their fit to the base
model) is checked before any model loads. The manifest is rewritten after every frame, so a run that
fails half-way (an adapter that does not load, a full disk) or is stopped (SIGTERM, Ctrl-C) leaves its
finished frames, the storyboard sheets of those frames, and a manifest saying where and why it stopped.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm.auto import tqdm

from aldar_lit.artifacts import StoryboardManifest, write_storyboard_manifest
from aldar_lit.config.infer import InferConfig, to_infer_config
from aldar_lit.images import load_rgb
from aldar_lit.pipelines.card_defaults import infer_with_card
from aldar_lit.pipelines.generator import (RefGuidance, StoryboardGenerator, adapter_card_prediction_type,
                                           base_unet_config, check_adapters_fit, check_lora_dir, materialise_adapters,
                                           resolve_device)
from aldar_lit.pipelines.outputs import write_contact_sheet, write_frame, write_html
from aldar_lit.pipelines.poses import get_pose, render_openpose
from aldar_lit.pipelines.shared_attention import SharedFrame, SharedTokens
from aldar_lit.pipelines.stop_signals import Interrupted, stop_on_signals
from aldar_lit.pipelines.story import Scene, load_story, prompt_for
from aldar_lit.quality.faces import FaceDetector, build_face_detector, crop_face, largest
from aldar_lit.quality.frame_qa import FrameQA, IdentityReference, QAReport
from aldar_lit.pipelines.retry_policy import Settings, next_attempt
from aldar_lit.tool_command import tool_command

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramePlan:
    index: int
    scene: Scene
    prompt: str
    settings: Settings
    pose: Optional[str]  # library pose name for ControlNet frames


def plan_frames(config: InferConfig, scenes: list[Scene]) -> list[FramePlan]:
    """Prompt, seed, CFG and pose of every frame, with pose names checked before any model loads."""
    default_pose = config.adapters.default_pose
    get_pose(default_pose, key="adapters.default_pose")
    gen = config.generation
    return [
        FramePlan(
            index=i + 1,
            scene=scene,
            prompt=prompt_for(scene, config.story.trigger, config.story.style),
            settings=Settings(scene.seed if scene.seed is not None else gen.seed + i,
                              scene.guidance_scale if scene.guidance_scale is not None else gen.guidance_scale),
            pose=(scene.pose or default_pose) if config.mode == "ref_guided" else scene.pose,
        )
        for i, scene in enumerate(scenes)
    ]


def without_baseline_lora(config: InferConfig) -> tuple[InferConfig, Optional[str]]:
    """mode=baseline is SDXL alone: the config without its LoRA, and the LoRA path it ignores (or None)."""
    if config.mode != "baseline" or config.lora.path is None:
        return config, None
    return replace(config, lora=replace(config.lora, path=None)), config.lora.path


def preflight(config: InferConfig) -> None:
    """Adapter files exist and fit the base model; the reference image is readable."""
    if config.lora.path is not None:
        adapter_card_prediction_type(check_lora_dir(config.lora.path))
    if config.mode == "ref_guided":
        from aldar_lit.models.loading import resolve_pretrained

        materialise_adapters(config.adapters, resolve_pretrained(config.model))
        check_adapters_fit(config.adapters, base_unet_config(config.model))
        if config.adapters.reference_image is not None:
            load_rgb(Path(config.adapters.reference_image).expanduser())


def random_weight_parts(config: InferConfig) -> list[str]:
    """What makes this storyboard with random weights (the tiny configs): its images and QA scores mean nothing."""
    parts = [f"model {config.model.name}"] if config.model.random_init is not None else []
    if config.mode == "ref_guided":
        parts += [f"{name} adapter" for name, adapter in (("IP", config.adapters.ip_adapter),
                                                           ("ControlNet", config.adapters.controlnet))
                  if adapter.random_init is not None]
    if config.qa.enabled and config.qa.clip.pretrained is None:
        parts.append(f"QA CLIP {config.qa.clip.model_name}")
    return parts


def test_mode_banner(random_weights: list[str]) -> Optional[str]:
    return f"TEST MODE, random weights ({', '.join(random_weights)})" if random_weights else None


class StoryboardRecord:
    """The manifest and the frames written so far; rewrites manifest.json (atomically) on every change."""

    def __init__(self, out_dir: Path, config: InferConfig, num_frames: int, log_warnings: bool = True):
        self.out_dir, self.log_warnings = out_dir, log_warnings
        self.images: list[Image.Image] = []
        self.banner = test_mode_banner(random_weight_parts(config))  # the sheet and the page say so at the top
        self.manifest = StoryboardManifest(
            status="running",
            mode=config.mode,
            base_model=config.model.pretrained,
            lora={"path": config.lora.path, "scale": config.lora.scale},
            story={"file": config.story.file, "llm_model": config.story.llm.model if config.story.text else None,
                   "trigger": config.story.trigger, "num_scenes": num_frames},
            generation={"width": config.generation.width, "height": config.generation.height,
                        "steps": config.generation.steps, "negative_prompt": config.generation.negative_prompt},
            qa={"enabled": config.qa.enabled, "max_attempts": config.qa.max_attempts,
                "prompt_threshold": config.qa.prompt_threshold, "identity_threshold": config.qa.identity_threshold,
                "clip_model": f"{config.qa.clip.model_name}/{config.qa.clip.pretrained}",
                "face_backend": config.qa.detectors.face_backend, "pose_backend": config.qa.detectors.pose_backend},
            consistency={"shared_attention": config.consistency.shared_attention},
        )
        self.save()

    def warn(self, message: str, frame: Optional[dict[str, Any]] = None) -> None:
        if self.log_warnings:
            log.warning(message)
        (frame["warnings"] if frame is not None else self.manifest.warnings).append(message)

    def add_frame(self, frame: dict[str, Any], image: Image.Image, png_text: dict[str, Any]) -> None:
        write_frame(self.out_dir / frame["file"], image, png_text)
        self.images.append(image)
        self.manifest.frames.append(frame)
        self.save()

    def describe_models(self, generator: StoryboardGenerator) -> None:
        """What the frames are really made with: dtypes, scheduler and prediction type, the LoRA tensors applied."""
        self.manifest.precision = generator.precision()
        self.manifest.scheduler = generator.scheduler_info
        if generator.lora_fit is not None:
            self.manifest.lora.update(generator.lora_fit.to_dict())
            if generator.lora_fit.unmatched:
                self.warn(f"lora: {len(generator.lora_fit.unmatched)} of {generator.lora_fit.tensors} tensors fit "
                          "no module of the base model and are not applied (lora.allow_partial=true)")
        self.save()

    def save(self) -> None:
        write_storyboard_manifest(self.out_dir, self.manifest)

    def write_sheets(self) -> None:
        """The contact sheet and the HTML page of the frames made so far."""
        if self.images:
            frames = self.manifest.frames
            write_contact_sheet(self.out_dir / "storyboard.png", self.images, [f["scene"]["text"] for f in frames],
                                flagged=[f["passed"] is False for f in frames], banner=self.banner)
            write_html(self.out_dir / "storyboard.html", f"Storyboard ({self.manifest.mode})", frames, self.images,
                       self.manifest.consistency, self.banner)

    def finish(self) -> None:
        self.write_sheets()
        self.manifest.status = "complete"
        self.save()

    def finish_stopped(self, status: str, error: str) -> None:
        """Record a failed or interrupted run. Nothing here raises (a full disk may refuse these writes too):
        what cannot be written is logged, so that the error which stopped the run stays the one reported."""
        self.manifest.status, self.manifest.error = status, error
        try:
            self.write_sheets()
        except Exception as err:
            self.warn(f"storyboard sheets not written: {err}")
        try:
            self.save()
        except Exception as err:
            log.error("manifest.json could not record status %r (%s): %s", status, error, err)


class Storyboard:
    """Generates the planned frames one by one, each with QA and auto-fix retries."""

    def __init__(self, config: InferConfig, generator: StoryboardGenerator, qa: Optional[FrameQA],
                 face_detector: Optional[FaceDetector], record: StoryboardRecord):
        self.config = config
        self.generator = generator
        self.qa = qa
        self.face_detector = face_detector
        self.record = record
        self.ip_reference: Optional[Image.Image] = None  # what the IP-Adapter sees (a face crop)
        self.identity_reference: Optional[IdentityReference] = None  # what QA compares faces with
        self.shared: Optional[SharedTokens] = None  # the anchor group's kept tokens (consistency.shared_attention)

    def keep_shared_tokens(self, plans: list[FramePlan]) -> None:
        """Denoise the anchor group (the first `consistency.group_size` frames) together and keep its shared tokens."""
        gen, started = self.config.generation, time.perf_counter()
        anchors = plans[:self.config.consistency.group_size]
        self.shared = SharedTokens(self.config.consistency, [p.settings.seed for p in anchors], gen.steps)
        self.generator.record_shared_tokens(self.shared, [p.prompt for p in anchors], gen.negative_prompt,
                                            [p.settings for p in anchors], gen.width, gen.height, gen.steps)
        self.record.manifest.consistency = {**self.shared.describe(),
                                               "seconds": round(time.perf_counter() - started, 4)}
        self.record.save()

    def set_reference(self, image: Image.Image, source: str, frame: Optional[dict[str, Any]] = None) -> None:
        """Crop the face of the identity anchor; without a face, fall back to the whole image (with a warning)."""
        faces = self.face_detector.detect(image) if self.face_detector is not None else []
        box = largest(faces)
        self.record.manifest.identity_reference = {"source": source, "face": box.to_dict() if box else None,
                                                      "fallback": None if box else "whole image"}
        if box is None:
            self.ip_reference = image
            self.identity_reference = None
            consequences = ["the identity check is skipped"]
            if self.config.mode == "ref_guided":
                consequences.insert(0, "the IP-Adapter is conditioned on the whole image instead of a face crop")
            message = f"no face found in {source}: {' and '.join(consequences)}"
            self.record.warn(message)
            if frame is not None:
                frame["warnings"].append(message)
            return
        self.ip_reference = crop_face(image, box, self.config.adapters.ip_adapter.face_margin)
        self.identity_reference = self.qa.identity_reference(image, box) if self.qa is not None else None
        if self.qa is not None and self.identity_reference is None:
            self.record.warn(f"the identity backend finds no face in {source}: the identity check is skipped")

    def guidance_for(self, plan: FramePlan) -> Optional[RefGuidance]:
        if self.config.mode != "ref_guided" or self.ip_reference is None:
            return None
        gen = self.config.generation
        pose = render_openpose(get_pose(plan.pose), gen.width, gen.height)
        return RefGuidance(reference=self.ip_reference, pose=pose)

    def make_frame(self, plan: FramePlan) -> None:
        gen, qa_cfg = self.config.generation, self.config.qa
        started = time.perf_counter()
        guidance = self.guidance_for(plan)
        frame: dict[str, Any] = {
            "index": plan.index, "file": f"frames/{plan.index:02d}.png", "scene": plan.scene.to_dict(),
            "prompt": plan.prompt, "negative_prompt": gen.negative_prompt, "mode": self.config.mode,
            "pose": plan.pose if guidance is not None else None,
            "active_adapters": self.generator.active_adapters(guided=guidance is not None),
            "attempts": [], "warnings": [],
        }
        max_attempts = qa_cfg.max_attempts if self.qa is not None else 1
        shared = SharedFrame(self.shared, plan.index - 1) if self.shared is not None else None  # same for retries
        settings, fix_reason = plan.settings, None
        images, reports = [], []
        for attempt in tqdm(range(max_attempts), desc=f"frame {plan.index} attempts", leave=False,
                            disable=not self.config.progress):
            t0 = time.perf_counter()
            image = self.generator.generate(plan.prompt, gen.negative_prompt, settings, gen.width, gen.height,
                                            gen.steps, guidance, shared)
            t1 = time.perf_counter()
            report: Optional[QAReport] = None
            if self.qa is not None:
                report = self.qa.evaluate(image, plan.prompt, self.identity_reference)
            images.append(image)
            reports.append(report)
            frame["attempts"].append({
                "attempt": attempt + 1, "seed": settings.seed, "guidance_scale": settings.guidance_scale,
                "fix": fix_reason, "qa": report.to_dict() if report is not None else None,
                "seconds": {"generate": round(t1 - t0, 4), "qa": round(report.seconds, 4) if report else 0.0},
            })
            if report is None or report.passed:
                break
            if attempt + 1 < max_attempts:
                fix = next_attempt(report.failures, settings, qa_cfg.autofix)
                settings, fix_reason = fix.settings, fix.reason
        chosen = max(range(len(images)), key=lambda i: reports[i].rank() if reports[i] is not None else ())
        final = frame["attempts"][chosen]
        frame.update(chosen_attempt=final["attempt"], seed=final["seed"], guidance_scale=final["guidance_scale"],
                     passed=None if reports[chosen] is None else reports[chosen].passed)
        frame["flagged"] = frame["passed"] is False
        if frame["flagged"]:
            self.record.warn(f"frame {plan.index}: no attempt passed QA in {len(images)}; kept attempt {final['attempt']} "
                             f"({', '.join(reports[chosen].failures)})", frame)
        if plan.index == 1 and self.config.adapters.reference_image is None:
            self.set_reference(images[chosen], "frame 1", frame)
        frame["seconds"] = round(time.perf_counter() - started, 4)
        png_text = {"prompt": plan.prompt, "negative_prompt": gen.negative_prompt, "seed": final["seed"],
                    "guidance_scale": final["guidance_scale"], "steps": gen.steps, "mode": self.config.mode,
                    "pose": frame["pose"], "base_model": self.config.model.pretrained}
        self.record.add_frame(frame, images[chosen], png_text)


@dataclass
class StoryboardModels:
    """Everything a storyboard loads: reusable across storyboards of the same base model and LoRA."""

    generator: StoryboardGenerator
    qa: Optional[FrameQA]
    face_detector: Optional[FaceDetector]


def load_models(config: InferConfig) -> StoryboardModels:
    face_detector = build_face_detector(config.qa.detectors)
    generator = StoryboardGenerator(config.model, config.lora, config.adapters, config.generation.device,
                                    progress=False, prediction_type=config.generation.prediction_type)
    device = resolve_device(config.generation.device)
    qa = FrameQA(config.qa, device, face_detector) if config.qa.enabled else None
    return StoryboardModels(generator, qa, face_detector)


def render_storyboard(config: InferConfig, out_dir: Path, models: Optional[StoryboardModels] = None,
                      log_warnings: bool = True) -> StoryboardManifest:
    """Generate and write one storyboard (loading the models unless given); return its manifest. Its warnings go to
    the manifest, and to the log unless `log_warnings` is false (a caller that counts them)."""
    t_start = time.perf_counter()
    config, ignored_lora = without_baseline_lora(config)
    scenes = load_story(config.story)
    plans = plan_frames(config, scenes)
    preflight(config)
    record = StoryboardRecord(out_dir, config, len(plans), log_warnings)
    if ignored_lora is not None:
        record.manifest.lora["ignored"] = ignored_lora
        record.warn(f"mode=baseline is SDXL alone: lora.path={ignored_lora} is ignored")
    try:
        models = models or load_models(config)
        record.describe_models(models.generator)
        if models.qa is not None:  # the identity check QA really runs: a backend, or CLIP and why
            record.manifest.qa["identity"] = models.qa.identity.describe()
        record.manifest.timings["load_seconds"] = round(time.perf_counter() - t_start, 3)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        storyboard = Storyboard(config, models.generator, models.qa, models.face_detector, record)
        if config.mode == "ref_guided" and config.adapters.reference_image is not None:
            storyboard.set_reference(load_rgb(Path(config.adapters.reference_image).expanduser()),
                                     f"adapters.reference_image {config.adapters.reference_image!r}")
        if config.consistency.shared_attention:
            storyboard.keep_shared_tokens(plans)
        for plan in tqdm(plans, desc="frames", disable=not config.progress):
            storyboard.make_frame(plan)
        timings = record.manifest.timings
        timings["total_seconds"] = round(time.perf_counter() - t_start, 3)
        timings["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        record.finish()
    except (Interrupted, KeyboardInterrupt) as stop:
        by = stop.signal_name if isinstance(stop, Interrupted) else "SIGINT"
        record.finish_stopped("interrupted", f"stopped by {by} after {len(record.images)} of {len(plans)} frames")
        raise
    except BaseException as err:
        record.finish_stopped("failed", f"{type(err).__name__}: {err}")
        raise
    return record.manifest


def make_storyboard(config: InferConfig, out_dir: Path) -> float:
    """Generate and write the storyboard, say where it is; return the fraction of frames that passed QA (NaN
    without QA)."""
    manifest = render_storyboard(config, out_dir)
    passed = [f["passed"] for f in manifest.frames if f["passed"] is not None]
    log.info(closing_summary(config, out_dir, passed))
    return sum(passed) / len(passed) if passed else float("nan")


def closing_summary(config: InferConfig, out_dir: Path, passed: list[bool]) -> str:
    """infer.py's last lines: where the storyboard is, how many frames passed QA, and how to evaluate the adapter."""
    qa = f"{sum(passed)} of {len(passed)} frames passed QA" if passed else "QA off"
    lines = [f"storyboard written to {out_dir} ({qa}; manifest.json lists each frame's attempts and failures)",
             f"  sheet: {out_dir / 'storyboard.png'}",
             f"  page:  {out_dir / 'storyboard.html'}"]
    if config.lora.path is not None and config.mode != "baseline":
        evaluate = f"{shlex.join(tool_command('evaluate'))} lora.path={config.lora.path} "
        evaluate += "reference_images=<the training images dir>"
        if random_weight_parts(config):  # the offline, CPU-sized evaluation, as the README gives it
            evaluate += (f" model={config.model.name} adapters=tiny qa=tiny scorer=tiny generation.width="
                         f"{config.generation.width} generation.height={config.generation.height} "
                         f"generation.steps={config.generation.steps} suite.seeds=[0,1]")
        lines += ["next, compare it with SDXL alone and the reference-guided mode:", f"  {evaluate}"]
    return "\n".join(lines)


def run(cfg: DictConfig) -> float:
    """infer.py's job. SIGTERM or Ctrl-C: the partial storyboard is kept and the exit code is 128 + the signal."""
    config = infer_with_card(to_infer_config(cfg))
    out_dir = Path(config.paths.output_dir)
    with stop_on_signals():
        try:
            return make_storyboard(config, out_dir)
        except Interrupted as stop:
            log.error("stopped by %s: the finished frames, their storyboard sheets and manifest.json "
                      "(status interrupted) are in %s", stop.signal_name, out_dir)
            raise SystemExit(stop.exit_code) from None
