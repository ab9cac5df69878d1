"""Story-visualisation measures after ViStoryBench (Zhuang et al., CVPR 2026; vistorybench.github.io/metrics and
github.com/ViStoryBench/vistorybench, bench/content/cids_evaluator.py): character similarity on the character crop,
copy-paste degree, character count match and style consistency across a storyboard.

The character crop: ViStoryBench boxes characters with Grounding DINO, which needs weights this project does not
ship. Offline, the character is found through its face (the face detector frame QA uses, `qa.detectors`): the
largest face box grown to the body, `heads_wide` face widths wide and from half a face above the face down to
`heads_tall` face heights below its top, clipped to the frame. Without a face the crop is the whole frame. Each
frame records which (`crop_from_face`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image

from aldar_lit.artifacts import StoryboardManifest
from aldar_lit.config.evaluate import StoryMetricsConfig
from aldar_lit.config import ConfigError
from aldar_lit.quality.clip_scorer import ClipScorer, ImageSimilarity, mean_reference_cosine
from aldar_lit.quality.faces import FaceBox, FaceDetector, crop_face, largest

Measure = tuple[int, str, Optional[float]]  # (frame index, 0 for the whole storyboard; metric; value or None)


def body_box(face: FaceBox, width: int, height: int, heads_wide: float, heads_tall: float) -> tuple[int, ...]:
    """(left, top, right, bottom) of the character whose face is `face`, clipped to a `width` x `height` frame."""
    centre = face.x + face.w / 2
    left, right = centre - heads_wide * face.w / 2, centre + heads_wide * face.w / 2
    top, bottom = face.y - face.h / 2, face.y + heads_tall * face.h
    return (max(0, round(left)), max(0, round(top)), min(width, round(right)), min(height, round(bottom)))


@dataclass(frozen=True)
class CharacterView:
    """What the detector found in one image: faces, the character crop and the face crop (None without a face)."""

    faces: Optional[list[FaceBox]]  # None without a detector
    character: Image.Image
    face: Optional[Image.Image]

    @property
    def from_face(self) -> bool:
        return self.face is not None


def character_view(image: Image.Image, detector: Optional[FaceDetector], cfg: StoryMetricsConfig,
                   face_margin: float) -> CharacterView:
    faces = detector.detect(image) if detector is not None else None
    box = largest(faces or [])
    if box is None:
        return CharacterView(faces, image, None)
    crop = image.crop(body_box(box, image.width, image.height, cfg.heads_wide, cfg.heads_tall))
    return CharacterView(faces, crop, crop_face(image, box, face_margin))


def self_similarity(embeds: torch.Tensor) -> Optional[float]:
    """Mean cosine over every pair of rows (L2-normalised embeddings); None with fewer than two rows."""
    if len(embeds) < 2:
        return None
    rows, cols = torch.triu_indices(len(embeds), len(embeds), offset=1)
    return float((embeds @ embeds.T)[rows, cols].mean())


def copy_paste_degree(frames: torch.Tensor, conditioned: torch.Tensor, others: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """(N,) how much closer each frame's character is to the exact image it was conditioned on than to the
    character's other images: softmax([s_ref, s_other] / T)[0], s = cosine, s_other the mean over `others`.

    ViStoryBench's copy-paste score (cids_evaluator.py: softmax over the similarities to the reference and to its
    mirror image, T = 0.01) takes the probability that a generated character is the reference itself rather than
    another view of it. Here the other views are the character's training images, which the brief of issue 14 asks
    for and which are real other images of the character (the mirror is ViStoryBench's stand-in when it has none).
    0.5: as close to both; near 1: a copy of the reference; near 0: closer to the character's other images."""
    s_ref = frames @ conditioned
    s_other = mean_reference_cosine(frames, others)
    return torch.softmax(torch.stack([s_ref, s_other], dim=1) / temperature, dim=1)[:, 0]


def load_csd(checkpoint: str, model_name: str, device: str, seed: int) -> ClipScorer:
    """CSD (Somepalli et al. 2024, "Measuring Style Similarity in Diffusion Models"), ViStoryBench's style embedding
    (bench/style/csd/csd_model.py, CSD_CLIP): CLIP's image tower (`backbone.*`, OpenAI naming, which open_clip's
    VisionTransformer shares) with its projection replaced by the style head `last_layer_style`. Images go through
    open_clip's preprocessing (resize + centre crop; CSD resizes to 224 x 224 without a crop)."""
    scorer = ClipScorer(model_name, None, device, seed)
    try:
        state = torch.load(Path(checkpoint).expanduser(), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors for a file that is no checkpoint
        raise ConfigError(f"story_metrics.style_csd_checkpoint: cannot load {checkpoint!r} ({type(err).__name__}: "
                          f"{err})") from err
    state = state.get("model_state_dict", state) if isinstance(state, dict) else {}
    backbone = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}
    if not backbone or "last_layer_style" not in state:
        raise ConfigError(f"story_metrics.style_csd_checkpoint: {checkpoint!r} is not a CSD checkpoint (needs "
                          "backbone.* and last_layer_style)")
    try:
        scorer.model.visual.load_state_dict({**backbone, "proj": state["last_layer_style"]}, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"story_metrics.style_csd_checkpoint: {checkpoint!r} does not fit open_clip {model_name} "
                          f"(story_metrics.style_model): {err}") from err
    return scorer


@dataclass
class StoryScorers:
    """The story measures' models: the face detector that finds the character, the style embedder."""

    detector: Optional[FaceDetector]
    style: ImageSimilarity
    style_name: str
    cfg: StoryMetricsConfig
    face_margin: float  # the IP-Adapter's face crop margin, so copy-paste compares like with like
    reference_image: Optional[Image.Image] = None  # adapters.reference_image, when ref_guided is conditioned on it

    def versions(self) -> dict[str, str]:
        finder = getattr(self.detector, "name", None)
        crop = (f"largest {finder} face box x ({self.cfg.heads_wide} wide, {self.cfg.heads_tall} tall) face sizes; "
                "whole frame without a face") if finder else "whole frame (no face detector: qa.detectors.face_backend)"
        return {"character crop": crop, "style": self.style_name}


@dataclass
class ReferenceViews:
    """The training images as the story measures see them: character crops and face crops, embedded once."""

    characters: dict[str, torch.Tensor]  # embedder name -> (M, D)
    faces: Optional[torch.Tensor]  # CLIP of the face crops (those with a face), None when none has one


def embedders(clip: ImageSimilarity, dino: Optional[ImageSimilarity]) -> dict[str, ImageSimilarity]:
    return {"clip": clip, **({"dino": dino} if dino is not None else {})}


def reference_views(images: Sequence[Image.Image], story: StoryScorers, clip: ImageSimilarity,
                    dino: Optional[ImageSimilarity]) -> Optional[ReferenceViews]:
    if not images:
        return None
    views = [character_view(img, story.detector, story.cfg, story.face_margin) for img in images]
    faces = [v.face for v in views if v.face is not None]
    return ReferenceViews({name: e.embed_images([v.character for v in views])
                           for name, e in embedders(clip, dino).items()},
                          clip.embed_images(faces) if faces else None)


def conditioned_reference(manifest: StoryboardManifest, frame1: Optional[Image.Image],
                          story: StoryScorers) -> Optional[Image.Image]:
    """The identity anchor the storyboard recorded (`identity_reference`: the face box on frame 1 or on
    adapters.reference_image), cropped as the IP-Adapter saw it; the whole image where the storyboard used it whole.
    In `simple` and `baseline` the same crop is what ref_guided would have been conditioned on: the control."""
    anchor = manifest.identity_reference
    base = story.reference_image if story.reference_image is not None else frame1
    if anchor is None or base is None:
        return None
    face = anchor.get("face")
    return base if face is None else crop_face(base, FaceBox(**face), story.face_margin)


def storyboard_measures(indices: Sequence[int], images: Sequence[Image.Image], manifest: StoryboardManifest,
                        story: StoryScorers, clip: ImageSimilarity, dino: Optional[ImageSimilarity],
                        references: Optional[ReferenceViews]) -> list[Measure]:
    """Every story measure of one storyboard: per frame and, with frame index 0, per storyboard."""
    cfg = story.cfg
    views = [character_view(img, story.detector, cfg, story.face_margin) for img in images]
    out: list[Measure] = []
    for index, view in zip(indices, views):
        out.append((index, "crop_from_face", view.from_face))
        out.append((index, "character_count_match",
                    None if view.faces is None else len(view.faces) == cfg.expected_characters))
    for name, embedder in embedders(clip, dino).items():
        embeds = embedder.embed_images([v.character for v in views])
        if references is not None:
            cross = mean_reference_cosine(embeds, references.characters[name]).tolist()
            out += [(index, f"char_cross/{name}", value) for index, value in zip(indices, cross)]
        out.append((0, f"char_self/{name}", self_similarity(embeds)))
    out.append((0, "style_consistency", self_similarity(story.style.embed_images(list(images)))))
    out += copy_paste_measures(indices, images, views, manifest, story, clip, references)
    return out


def copy_paste_measures(indices: Sequence[int], images: Sequence[Image.Image], views: Sequence[CharacterView],
                        manifest: StoryboardManifest, story: StoryScorers, clip: ImageSimilarity,
                        references: Optional[ReferenceViews]) -> list[Measure]:
    """copy_paste per frame 2..N with a face; NaN (None) where the frame has no face, and absent without
    training images with a face or a recorded identity anchor."""
    frame1 = next((img for index, img in zip(indices, images) if index == 1), None)
    conditioned = conditioned_reference(manifest, frame1, story)
    if conditioned is None or references is None or references.faces is None:
        return []
    later = [(index, view) for index, view in zip(indices, views) if index != 1]
    with_face = [(index, view.face) for index, view in later if view.face is not None]
    values: dict[int, float] = {}
    if with_face:
        degrees = copy_paste_degree(clip.embed_images([face for _, face in with_face]),
                                    clip.embed_images([conditioned])[0], references.faces,
                                    story.cfg.copy_paste_temperature)
        values = {index: float(d) for (index, _), d in zip(with_face, degrees)}
    return [(index, "copy_paste", values.get(index)) for index, _ in later]

