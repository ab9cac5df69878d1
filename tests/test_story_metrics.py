"""Story-visualisation measures (ViStoryBench) on real photographs and synthetic embeddings: the character crop,
character similarity, copy-paste degree, character count match and style consistency."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from aldar_lit.artifacts import StoryboardManifest
from aldar_lit.config.evaluate import StoryMetricsConfig
from aldar_lit.evaluation.story_metrics import (StoryScorers, body_box, character_view, copy_paste_degree,
                                                reference_views, self_similarity, storyboard_measures)
from aldar_lit.quality.faces import FaceBox, HaarFaceDetector
from fixtures_eval import astronaut, cat, grace_hopper

CFG = StoryMetricsConfig()


@pytest.fixture(scope="module")
def clip():
    from aldar_lit.quality.clip_scorer import ClipScorer

    return ClipScorer("aldar-tiny-clip", None)


@pytest.fixture(scope="module")
def story(clip) -> StoryScorers:
    return StoryScorers(HaarFaceDetector(), clip, "tiny clip", CFG, face_margin=0.4)


def unit(*rows) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def two_people() -> Image.Image:
    frame = Image.new("RGB", (1024, 512))
    frame.paste(astronaut(), (0, 0))
    frame.paste(astronaut(), (512, 0))
    return frame


def test_the_body_box_grows_the_face_to_the_character_and_stays_in_the_frame() -> None:
    face = FaceBox(90, 20, 20, 20)
    # 3 face widths wide around the face centre; half a face above it, 6 face heights below its top
    assert body_box(face, 200, 300, 3.0, 6.0) == (70, 10, 130, 140)
    assert body_box(face, 120, 100, 3.0, 6.0) == (70, 10, 120, 100)  # clipped at the right and bottom edges


def test_the_character_crop_comes_from_the_face_or_is_the_whole_frame() -> None:
    detector = HaarFaceDetector()
    photo = astronaut()
    view = character_view(photo, detector, CFG, 0.4)
    (face,) = view.faces
    # a portrait: the body reaches below the frame, so the crop runs from half a face above the face to the bottom
    assert view.from_face and view.character.size == (3 * face.w, photo.height - round(face.y - face.h / 2))
    assert view.face.width < view.character.width < photo.width
    no_face = character_view(cat(), detector, CFG, 0.4)
    assert not no_face.from_face and no_face.character.size == cat().size and no_face.face is None
    blind = character_view(photo, None, CFG, 0.4)  # qa.detectors.face_backend=none: no count, whole frame
    assert blind.faces is None and not blind.from_face


def test_self_similarity_is_the_mean_over_pairs() -> None:
    assert self_similarity(unit([1, 0], [1, 0], [1, 0])) == pytest.approx(1.0)
    assert self_similarity(unit([1, 0], [0, 1], [1, 1])) == pytest.approx((0 + 2 ** -0.5 + 2 ** -0.5) / 3)
    assert self_similarity(unit([1, 0])) is None


def test_copy_paste_is_near_one_for_a_copy_one_half_when_equidistant_and_near_zero_for_another_view() -> None:
    reference = unit([1, 0, 0])[0]
    others = unit([0, 1, 0], [0, 0.8, 0.6])
    frames = unit([1, 0, 0],  # the reference itself
                  [0.9, 1, 0],  # as close to the reference as to the other views on average
                  [0, 1, 0.3])  # another view of the character
    degree = copy_paste_degree(frames, reference, others, 0.01)
    s_ref, s_other = frames @ reference, (frames @ others.T).mean(1)
    assert float(s_ref[1]) == pytest.approx(float(s_other[1]), abs=1e-6)
    assert degree[0] > 0.999 and float(degree[1]) == pytest.approx(0.5, abs=1e-3) and degree[2] < 1e-3
    # ViStoryBench's temperature makes a 0.01 cosine margin worth e:1
    close = copy_paste_degree(unit([1, 0]), unit([1, 0])[0], unit([math.cos(0.1415), math.sin(0.1415)]), 0.01)
    assert float(close[0]) == pytest.approx(1 / (1 + math.exp(-(1 - math.cos(0.1415)) / 0.01)), rel=1e-4)


UNANCHORED = StoryboardManifest(status="complete", mode="simple")  # no identity_reference recorded


def manifest_anchored_on(frame1: Image.Image) -> StoryboardManifest:
    """What the storyboard records for its identity anchor: frame 1's largest face (storyboard.set_reference)."""
    (face,) = HaarFaceDetector().detect(frame1)
    return StoryboardManifest(status="complete", mode="ref_guided",
                              identity_reference={"source": "frame 1", "face": face.to_dict(), "fallback": None})


def by_metric(measures) -> dict:
    table: dict = {}
    for index, metric, value in measures:
        table.setdefault(metric, {})[index] = value
    return table


def test_storyboard_measures_count_characters_and_compare_crops(story, clip) -> None:
    photo = astronaut()
    frames = [photo, photo, two_people(), cat()]
    refs = reference_views([photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.resize((384, 384))], story,
                           clip, None)
    table = by_metric(storyboard_measures([1, 2, 3, 4], frames, manifest_anchored_on(photo), story, clip, None, refs))
    assert table["crop_from_face"] == {1: True, 2: True, 3: True, 4: False}
    assert table["character_count_match"] == {1: True, 2: True, 3: False, 4: False}  # two faces, no face
    assert set(table["char_cross/clip"]) == {1, 2, 3, 4} and set(table["char_self/clip"]) == {0}
    # frame 2 is frame 1 again: its face crop is the exact anchor; frame 4 has no face: no value, not a guess
    assert set(table["copy_paste"]) == {2, 3, 4} and table["copy_paste"][4] is None
    assert table["copy_paste"][2] > max(0.5, table["copy_paste"][3])  # closer to the anchor than to anything else
    assert table["style_consistency"][0] < 1.0

    same = by_metric(storyboard_measures([1, 2, 3], [photo] * 3, UNANCHORED, story, clip, None, refs))
    assert same["char_self/clip"][0] == pytest.approx(1.0, abs=1e-5)
    assert same["style_consistency"][0] == pytest.approx(1.0, abs=1e-5)
    assert "copy_paste" not in same  # no recorded identity anchor: nothing to compare with
    assert "char_cross/clip" not in by_metric(storyboard_measures([1], [photo], UNANCHORED, story, clip, None, None))


def test_copy_paste_is_higher_for_a_copied_face_than_for_the_same_person_reposed(story, clip) -> None:
    photo = astronaut()
    refs = reference_views([photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.resize((400, 400))], story,
                           clip, None)
    shifted = Image.new("RGB", photo.size)
    shifted.paste(photo.crop((0, 0, 470, 512)), (42, 0))  # the same face elsewhere in the frame: still a copy
    reposed = photo.rotate(12, resample=Image.Resampling.BICUBIC)
    table = by_metric(storyboard_measures([1, 2, 3], [photo, shifted, reposed], manifest_anchored_on(photo), story,
                                          clip, None, refs))
    assert table["copy_paste"][2] > table["copy_paste"][3]


def test_a_different_person_is_less_similar_to_the_references_than_the_character(story, clip) -> None:
    photo = astronaut()
    refs = reference_views([photo], story, clip, None)
    frames = [photo.resize((448, 448)), grace_hopper()]
    table = by_metric(storyboard_measures([1, 2], frames, UNANCHORED, story, clip, None, refs))
    assert table["char_cross/clip"][1] > table["char_cross/clip"][2]


def test_the_style_model_is_the_scorers_clip_unless_configured(tmp_path, clip) -> None:
    from aldar_lit.config import ConfigError
    from aldar_lit.evaluation.metrics import build_story_scorers
    from test_eval_bad_input import eval_config

    default = build_story_scorers(eval_config(tmp_path), "cpu", clip)
    assert default.style is clip and default.style_name == "the scorer's CLIP (aldar-tiny-clip)"
    assert default.detector.name == "haar"  # qa.detectors: the detector frame QA counts faces with
    other = build_story_scorers(eval_config(tmp_path, "story_metrics.style_model=aldar-tiny-clip"), "cpu", clip)
    assert other.style is not clip and other.style_name == "open_clip aldar-tiny-clip / random weights"
    assert other.style.embed_images([cat()]).shape == (1, clip.embed_dim)
    with pytest.raises(ConfigError, match="story_metrics.style_pretrained: needs story_metrics.style_model"):
        eval_config(tmp_path, "story_metrics.style_pretrained=/models/csd.pt")
    with pytest.raises(ConfigError, match="story_metrics.expected_characters"):
        eval_config(tmp_path, "story_metrics.expected_characters=-1")


def write_csd_checkpoint(path, seed: int = 7):
    """A checkpoint in CSD's layout (CSD_CLIP in ViStoryBench's bench/style/csd/csd_model.py: the CLIP image tower as
    `backbone.*` without its projection, the heads `last_layer_style` and `last_layer_content`), on the tiny CLIP."""
    import open_clip

    torch.manual_seed(seed)
    visual = open_clip.create_model("aldar-tiny-clip").visual
    heads = {name: torch.randn_like(visual.proj) for name in ("last_layer_style", "last_layer_content")}
    state = {f"backbone.{key}": value for key, value in visual.state_dict().items() if key != "proj"}
    torch.save({**state, **heads}, path)
    visual.proj = None  # CSD_CLIP's backbone: features before any projection
    return visual.eval(), heads["last_layer_style"]


def test_a_csd_checkpoint_embeds_style_as_csd_does(tmp_path, clip) -> None:
    from aldar_lit.config import ConfigError
    from aldar_lit.evaluation.metrics import build_story_scorers
    from test_eval_bad_input import eval_config

    backbone, style_head = write_csd_checkpoint(tmp_path / "csd.pth")
    cfg = eval_config(tmp_path, "story_metrics.style_model=aldar-tiny-clip",
                      f"story_metrics.style_csd_checkpoint={tmp_path / 'csd.pth'}")
    story = build_story_scorers(cfg, "cpu", clip)
    images = [astronaut(), cat()]
    pixels = torch.stack([story.style.preprocess(img) for img in images])
    with torch.no_grad():  # CSD_CLIP.forward: normalize(backbone(x) @ last_layer_style)
        expected = torch.nn.functional.normalize(backbone(pixels) @ style_head, dim=-1)
    assert torch.allclose(story.style.embed_images(images), expected, atol=1e-5)
    assert story.style_name.startswith("CSD style head on open_clip aldar-tiny-clip")

    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    broken = eval_config(tmp_path, "story_metrics.style_model=aldar-tiny-clip",
                         f"story_metrics.style_csd_checkpoint={tmp_path / 'broken.pth'}")
    with pytest.raises(ConfigError, match=r"style_csd_checkpoint: cannot load .*broken.pth"):
        build_story_scorers(broken, "cpu", clip)
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    other = eval_config(tmp_path, "story_metrics.style_model=aldar-tiny-clip",
                        f"story_metrics.style_csd_checkpoint={tmp_path / 'other.pth'}")
    with pytest.raises(ConfigError, match="is not a CSD checkpoint"):
        build_story_scorers(other, "cpu", clip)
    with pytest.raises(ConfigError, match="style_csd_checkpoint: no such file"):
        eval_config(tmp_path, "story_metrics.style_model=ViT-L-14", f"story_metrics.style_csd_checkpoint={tmp_path}/x")
