"""Per-image and per-story metrics of generated storyboards, as long rows (one per image x metric).

A value is NaN where it cannot exist (no face detected, no QA run, frame 1 compared with itself); the
summary then reports how many images had a value next to the mean, never a mean over survivors alone.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from aldar_lit.data.dataset import load_rgb
from aldar_lit.config.evaluate import EvalConfig
from aldar_lit.evaluation.generation import StoryboardRun
from aldar_lit.evaluation.statistics import Estimate, cluster_mean, cluster_totals, paired_difference
from aldar_lit.evaluation.story_metrics import StoryScorers, load_csd, reference_views, storyboard_measures
from aldar_lit.quality.clip_scorer import ClipScorer
from aldar_lit.quality.dino_scorer import DinoScorer
from aldar_lit.quality.face_identity import FaceIdentityEmbedder, IdentityFace, VerificationRule, main_face
from aldar_lit.quality.faces import build_face_detector
from aldar_lit.quality.verdicts import CUT_OFF, INVALID_POSE, MULTIPLE_FACES, NO_FACE, TOO_SMALL
from aldar_lit.quality.references import folder_references
from aldar_lit.quality.subject_score import SubjectScorer, scorer_models

log = logging.getLogger(__name__)
ANOMALIES = (NO_FACE, MULTIPLE_FACES, INVALID_POSE, TOO_SMALL, CUT_OFF)

# name (without the "/backend" suffix of identity metrics) -> definition, for the report
DEFINITIONS = {
    "clip_t": "CLIP-T: cosine between the frame and its prompt (open_clip); prompt fidelity (DreamBench)",
    "clip_i": "CLIP-I: mean cosine between the frame and every training image; subject fidelity (DreamBench)",
    "dino": "DINO: mean cosine of DINO ViT-S/16 CLS embeddings, frame vs every training image (DreamBench)",
    "score": "the checkpoint-selection score (training's val/score): scorer.weights x (clip_t, clip_i, dino) of the "
             "frame; the mean over frames is val/score of those images",
    "face_detected": "1 when the identity backend found a face in the frame, else 0 (the detection rate)",
    "id_to_frame1": "cosine of the frame's largest face to frame 1's, same storyboard; frames 2..N with both faces",
    "id_to_train": "mean cosine of the frame's largest face to the faces of the training images",
    "verified_to_frame1": "1 when the frame's largest face is the same person as frame 1's by the backend's published "
                          "rule (dlib: Euclidean distance < 0.6; ArcFace: cosine >= 0.4), 0 when not or when either "
                          "frame has no face; frames 2..N. The mode's mean is the technical justification's "
                          "'face consistency' rate",
    "verified_to_train": "1 when the frame's largest face is the same person as more than half of the training "
                         "images' faces by that rule, 0 when not or when the frame has no face",
    "story_consistency": "per storyboard: mean pairwise cosine between the faces of its frames (those detected)",
    "story_consistency_sd": "per storyboard: standard deviation of those pairwise cosines",
    "crop_from_face": "1 when the frame's character crop is its largest face box grown to the body (story_metrics "
                      "heads_wide x heads_tall face sizes), 0 when it is the whole frame (no face found)",
    "char_cross": "ViStoryBench CIDS cross-similarity: mean cosine of the frame's character crop to the training "
                  "images' character crops (CLIP or DINO; the face-only versions are id_to_train/<backend>)",
    "char_self": "ViStoryBench CIDS self-similarity, per storyboard: mean cosine over every pair of its frames' character "
                 "crops (the face-only version is story_consistency/<backend>)",
    "copy_paste": "ViStoryBench copy-paste degree, frames 2..N with a face: softmax([s_ref, s_other] / 0.01)[0], s_ref the "
                  "CLIP cosine of the frame's face crop to the exact crop the storyboard anchors on (frame 1's face, as "
                  "the IP-Adapter saw it), s_other its mean cosine to the training images' face crops; 0.5 = equally "
                  "close, near 1 = copies the reference. In simple/baseline the same crop is the control",
    "character_count_match": "1 when the number of faces found (qa.detectors' face detector) equals the characters "
                             "the scene asks for (story_metrics.expected_characters, default 1), else 0",
    "style_consistency": "per storyboard: mean pairwise cosine of whole-frame style embeddings (the scorer's CLIP "
                         "unless story_metrics.style_model names another, e.g. a CSD-style checkpoint)",
    "vlm_scene": "prompt alignment of the setting judged by a vision-language model, ViStoryBench's 0-4 scale x 25 "
                 "(0-100); failures (malformed or out-of-range answers) have no value",
    "vlm_character_action": "the same for the character's action and pose (0-100)",
    "vlm_camera": "the same for the shot size and camera angle the prompt asks for (0-100)",
    "anomaly": "1 when the kept attempt had a face/pose anomaly in QA (no/several faces, bad pose, small, cut off)",
    "qa_attempts": "generation attempts spent on the frame (QA retries + 1)",
    "seconds": "wall seconds for the frame, all attempts and QA included",
    "peak_memory_gb": "per storyboard: peak accelerator memory during its generation (GB; NaN on CPU or reused runs)",
}


def base_metric(metric: str) -> str:
    return metric.split("/", 1)[0]


@dataclass
class Scorers:
    clip: ClipScorer
    dino: Optional[DinoScorer]
    identity: dict[str, FaceIdentityEmbedder]
    unavailable: dict[str, str] = field(default_factory=dict)  # backend -> why it did not load
    story: Optional[StoryScorers] = None  # the story-visualisation measures; None: not measured
    weights: dict[str, float] = field(default_factory=dict)  # scorer.weights of `score`; empty: no score

    def versions(self, cfg: EvalConfig) -> dict[str, str]:
        """What produced each number, for the report."""
        sc = cfg.scorer
        weights = sc.clip.pretrained or f"random weights (seed {sc.seed})"
        versions = {"clip": f"open_clip {sc.clip.model_name} / {weights}"}
        if self.dino is not None:
            versions["dino"] = f"timm {sc.dino.model_name} ({'pretrained' if sc.dino.pretrained else 'random weights'})"
        versions.update({f"identity/{name}": f"{e.version}; same person when {e.verification.describe()}"
                         for name, e in self.identity.items()})
        versions.update({f"identity/{name}": f"UNAVAILABLE: {why}" for name, why in self.unavailable.items()})
        if self.story is not None:
            versions.update(self.story.versions())
        return versions


def build_scorers(cfg: EvalConfig, device: str, identity: dict[str, FaceIdentityEmbedder],
                  unavailable: dict[str, str]) -> Scorers:
    """CLIP and DINO, with the identity backends built (or found unavailable) by
    `quality.face_identity.build_identity_embedders`."""
    clip, dino = scorer_models(cfg.scorer, device)
    return Scorers(clip, dino, identity, unavailable, build_story_scorers(cfg, device, clip), dict(cfg.scorer.weights))


def build_story_scorers(cfg: EvalConfig, device: str, clip: ClipScorer) -> StoryScorers:
    """The face detector frame QA uses (it finds the character) and the style embedder (the scorer's CLIP unless
    story_metrics.style_model names another open_clip model)."""
    sm = cfg.story_metrics
    if sm.style_model is None:
        style, style_name = clip, f"the scorer's CLIP ({cfg.scorer.clip.model_name})"
    elif sm.style_csd_checkpoint is not None:
        style = load_csd(sm.style_csd_checkpoint, sm.style_model, device, cfg.scorer.seed)
        style_name = f"CSD style head on open_clip {sm.style_model} ({sm.style_csd_checkpoint})"
    else:
        style = ClipScorer(sm.style_model, sm.style_pretrained, device, cfg.scorer.seed)
        style_name = f"open_clip {sm.style_model} / {sm.style_pretrained or 'random weights'}"
    reference = cfg.adapters.reference_image
    return StoryScorers(build_face_detector(cfg.qa.detectors), style, style_name, sm,
                        cfg.adapters.ip_adapter.face_margin,
                        None if reference is None else load_rgb(Path(reference).expanduser()))


def load_reference_images(root: Optional[str], limit: int) -> list[Image.Image]:
    """At most `limit` of the character's training images, selected as training selects its references; none
    when `root` is None."""
    return [] if root is None else folder_references(root, limit)


@dataclass
class Frame:
    run: StoryboardRun
    index: int
    prompt: str
    image: Image.Image
    seconds: float
    attempts: int
    anomaly: Optional[bool]  # None without QA


def frames_of(run: StoryboardRun) -> list[Frame]:
    frames = []
    for entry in run.manifest.frames:
        kept = entry["attempts"][entry.get("chosen_attempt", 1) - 1]  # attempts count from 1
        qa = kept.get("qa")
        anomaly = None if qa is None else any(f in ANOMALIES for f in qa.get("failures", []))
        frames.append(Frame(run, int(entry["index"]), entry["prompt"], load_rgb(run.dir / entry["file"]),
                            float(entry.get("seconds", np.nan)), len(entry["attempts"]), anomaly))
    return frames


def measurement_row(run: StoryboardRun, frame: int, prompt: str, metric: str, value: Optional[float]) -> dict[str, Any]:
    return {"mode": run.mode, "story": run.story, "seed": run.seed, "frame": frame, "prompt": prompt,
            "metric": metric, "value": np.nan if value is None else float(value)}


def pairwise_matrix(embeddings: Sequence[Optional[np.ndarray]]) -> np.ndarray:
    """Cosine between every two frames' faces; NaN where either has none."""
    n = len(embeddings)
    matrix = np.full((n, n), np.nan)
    for i, j in itertools.product(range(n), repeat=2):
        if embeddings[i] is not None and embeddings[j] is not None:
            matrix[i, j] = float(embeddings[i] @ embeddings[j])
    return matrix


@dataclass
class Measurements:
    rows: list[dict[str, Any]]
    heatmaps: dict[tuple, np.ndarray]  # (mode, story, seed, backend) -> frame x frame identity cosines


def measure(runs: list[StoryboardRun], scorers: Scorers, references: list[Image.Image]) -> Measurements:
    """Every metric for every frame of every storyboard."""
    rows: list[dict[str, Any]] = []
    heatmaps: dict[tuple, np.ndarray] = {}
    subject = SubjectScorer(scorers.clip, references, scorers.weights, scorers.dino)
    ref_faces = {name: [f for f in (main_face(e.embed(img)) for img in references) if f is not None]
                 for name, e in scorers.identity.items()}
    for name, faces in ref_faces.items():
        if references and not faces:
            log.warning("identity %s: no face found in any reference image; id_to_train is NaN", name)
    story = scorers.story
    ref_views = reference_views(references, story, scorers.clip, scorers.dino) if story is not None else None
    for run in runs:
        frames = frames_of(run)
        images = [f.image for f in frames]
        subject_metrics = {name: values.tolist() for name, values in
                           subject.per_image(images, [f.prompt for f in frames]).items()}
        for position, frame in enumerate(frames):
            rows += [measurement_row(run, frame.index, frame.prompt, name, values[position])
                     for name, values in subject_metrics.items()]
            rows += [measurement_row(run, frame.index, frame.prompt, "anomaly", frame.anomaly),
                     measurement_row(run, frame.index, frame.prompt, "qa_attempts", frame.attempts),
                     measurement_row(run, frame.index, frame.prompt, "seconds", frame.seconds)]
        for name, embedder in scorers.identity.items():
            faces = [main_face(embedder.embed(f.image)) for f in frames]
            embeds = [None if face is None else face.embedding for face in faces]
            first_face = next((face for f, face in zip(frames, faces) if f.index == 1), None)
            train = np.stack([f.embedding for f in ref_faces[name]]) if ref_faces[name] else None
            for frame, face in zip(frames, faces):
                emb = None if face is None else face.embedding
                to_first = None if (face is None or first_face is None or frame.index == 1) else float(
                    emb @ first_face.embedding)
                to_train = None if (emb is None or train is None) else float((train @ emb).mean())
                rows += [measurement_row(run, frame.index, frame.prompt, f"face_detected/{name}", face is not None),
                         measurement_row(run, frame.index, frame.prompt, f"id_to_frame1/{name}", to_first),
                         measurement_row(run, frame.index, frame.prompt, f"id_to_train/{name}", to_train),
                         measurement_row(run, frame.index, frame.prompt, f"verified_to_frame1/{name}",
                              None if frame.index == 1 else verified(embedder.verification, face, [first_face])),
                         measurement_row(run, frame.index, frame.prompt, f"verified_to_train/{name}",
                              verified(embedder.verification, face, ref_faces[name]) if ref_faces[name] else None)]
            matrix = pairwise_matrix(embeds)
            heatmaps[(run.mode, run.story, run.seed, name)] = matrix
            pairs = matrix[np.triu_indices(len(frames), k=1)]
            pairs = pairs[np.isfinite(pairs)]
            rows += [measurement_row(run, 0, "", f"story_consistency/{name}", pairs.mean() if len(pairs) else None),
                     measurement_row(run, 0, "", f"story_consistency_sd/{name}", pairs.std() if len(pairs) else None)]
        if story is not None:
            prompts = {f.index: f.prompt for f in frames}
            rows += [measurement_row(run, index, prompts.get(index, ""), metric, value) for index, metric, value in
                     storyboard_measures([f.index for f in frames], images, run.manifest, story, scorers.clip,
                                         scorers.dino, ref_views)]
        peak = run.manifest.timings.get("peak_memory_bytes")
        rows.append(measurement_row(run, 0, "", "peak_memory_gb", None if peak is None else peak / 1e9))
    return Measurements(rows, heatmaps)


def verified(rule: VerificationRule, face: Optional[IdentityFace], references: list[Optional[IdentityFace]]) -> bool:
    """Whether `face` is the same person as more than half of `references` by the backend's rule; a missing face
    (in the frame or as a reference) is a failure, never skipped."""
    if face is None:
        return False
    votes = [ref is not None and rule.same_person(face, ref) for ref in references]
    return sum(votes) > len(votes) / 2


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["metric"] for r in rows))


def storyboard(row: dict[str, Any]) -> tuple:
    """The cluster a row belongs to: its storyboard (story x seed)."""
    return row["story"], row["seed"]


def storyboard_means(rows: list[dict[str, Any]], mode: str, metric: str) -> np.ndarray:
    """The mean of `metric` within each storyboard of `mode` that has a value: the units the statistics resample."""
    selected = [r for r in rows if r["metric"] == metric and r["mode"] == mode]
    return cluster_totals([r["value"] for r in selected], [storyboard(r) for r in selected]).means


def summarise(rows: list[dict[str, Any]], modes: list[str], num_resamples: int, confidence: float,
              seed: int) -> list[dict[str, Any]]:
    """Per mode x metric: mean with a storyboard-clustered bootstrap CI over the units that have a value, and how
    many units and storyboards do."""
    summary = []
    for metric in metric_names(rows):
        for mode in modes:
            selected = [r for r in rows if r["metric"] == metric and r["mode"] == mode]
            if not selected:
                continue
            est = cluster_mean([r["value"] for r in selected], [storyboard(r) for r in selected], num_resamples,
                               confidence, seed)
            summary.append({"mode": mode, "metric": metric, "n": est.n, "n_total": len(selected),
                            "storyboards": est.clusters, "mean": est.mean, "ci_low": est.ci_low,
                            "ci_high": est.ci_high})
    return summary


def compare(rows: list[dict[str, Any]], modes: list[str], num_resamples: int, confidence: float,
            seed: int) -> list[dict[str, Any]]:
    """Paired differences (later mode minus earlier, e.g. simple - baseline) per metric over shared units
    (story, seed, frame), clustered by storyboard: bootstrap CI, sign-flip p-value, minimum detectable effect."""
    comparisons = []
    by_key = {(r["metric"], r["mode"], r["story"], r["seed"], r["frame"]): r["value"] for r in rows}
    for metric in metric_names(rows):
        if base_metric(metric) in ("qa_attempts", "seconds", "peak_memory_gb"):
            continue
        for control, treatment in itertools.combinations(modes, 2):
            units = sorted({k[2:] for k in by_key if k[0] == metric and k[1] == control}
                           & {k[2:] for k in by_key if k[0] == metric and k[1] == treatment})
            if not units:
                continue
            est: Estimate = paired_difference([by_key[(metric, treatment, *u)] for u in units],
                                              [by_key[(metric, control, *u)] for u in units],
                                              [u[:2] for u in units], num_resamples, confidence, seed)
            comparisons.append({"metric": metric, "treatment": treatment, "control": control,
                                "n_pairs": est.n, "n_units": len(units), "storyboards": est.clusters,
                                "mean_diff": est.mean, "ci_low": est.ci_low, "ci_high": est.ci_high,
                                "p_value": est.p_value, "p_method": est.p_method, "mde": est.mde,
                                "significant": est.significant})
    return comparisons
