"""Consistent self-attention on the tiny model: the option off or with nothing to share changes no pixel, on it
changes frames, the UNet is handed back as it was (LoRA, IP-Adapter and ControlNet loaded), and the shared
context is a function of the storyboard's seeds, the same for every attempt at a frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from PIL import Image

from aldar_lit.artifacts import StoryboardManifest, read_storyboard_manifest
from aldar_lit.config import ConfigError
from aldar_lit.config.infer import to_infer_config
from aldar_lit.pipelines.shared_attention import SELF_ATTENTION, SharedFrame, SharedTokens
from aldar_lit.pipelines.storyboard import load_models, plan_frames, render_storyboard
from aldar_lit.pipelines.story import load_story
from aldar_lit.pipelines.retry_policy import Settings

from fixtures_eval import tiny_arcface_onnx  # noqa: F401
from fixtures_storyboard import TINY_GENERATION, compose_infer, tiny_lora_dir, write_story  # noqa: F401

THREE_SCENES = [{"text": "aldar_kose_man smiling in front of a yurt"},
                {"text": "aldar_kose_man walking across the steppe", "pose": "walking"},
                {"text": "aldar_kose_man riding a horse", "pose": "riding"}]
SHARED = ["consistency.shared_attention=true", "consistency.group_size=2", "consistency.layers=[down,mid,up]"]


@pytest.fixture(scope="module")
def three_scene_story(tmp_path_factory) -> Path:
    return write_story(tmp_path_factory.mktemp("story") / "three.yaml", THREE_SCENES)


def infer_config(story: Path, out_dir: Path, *overrides: str):
    return to_infer_config(compose_infer(["model=tiny", "adapters=tiny", "qa=off", f"story.file={story}",
                                          f"paths.output_dir={out_dir}", *TINY_GENERATION, *overrides]))


def render(config, out_dir: Path, models=None) -> tuple[StoryboardManifest, list[np.ndarray]]:
    manifest = render_storyboard(config, out_dir, models)
    return manifest, [np.asarray(Image.open(out_dir / f["file"]), dtype=np.int16) for f in manifest.frames]


def processors(unet: torch.nn.Module) -> dict[str, int]:
    return {name: id(p) for name, p in unet.attn_processors.items()}


@pytest.fixture(scope="module")
def simple_runs(tiny_model_dir, tiny_lora_dir, three_scene_story, tmp_path_factory):
    """simple mode + LoRA: a fresh plain run, then shared variants and a plain run from one loaded model set."""
    root = tmp_path_factory.mktemp("shared_simple")
    common = ["mode=simple", f"lora.path={tiny_lora_dir}"]
    runs = {"fresh_off": render(infer_config(three_scene_story, root / "fresh_off", *common), root / "fresh_off")}
    models = load_models(infer_config(three_scene_story, root, *common))
    before = processors(models.generator.base.unet)
    for name, extra in {"shared": SHARED, "rate_0": [*SHARED, "consistency.sample_rate=0.0"],
                        "group_1": [*SHARED, "consistency.group_size=1"], "off_after": []}.items():
        runs[name] = render(infer_config(three_scene_story, root / name, *common, *extra), root / name, models)
    runs.update(root=root, models=models, processors_before=before, common=common)
    return runs


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max() > 2)


def test_sharing_changes_frames_and_rate_0_changes_none(simple_runs):
    _, off = simple_runs["fresh_off"]
    _, shared = simple_runs["shared"]
    _, rate_0 = simple_runs["rate_0"]
    for index in range(3):
        np.testing.assert_array_equal(rate_0[index], off[index], err_msg=f"sample_rate=0 changed frame {index + 1}")
    assert all(differs(s, o) for s, o in zip(shared, off)), "sharing left a frame unchanged"


def test_a_lone_anchor_frame_is_unchanged_and_later_frames_read_it(simple_runs):
    """group_size=1: frame 1 has no other anchor to share with; frames 2..N attend to its kept tokens."""
    _, off = simple_runs["fresh_off"]
    _, group_1 = simple_runs["group_1"]
    np.testing.assert_array_equal(group_1[0], off[0])
    assert differs(group_1[1], off[1]) and differs(group_1[2], off[2])


def test_a_plain_storyboard_after_a_shared_one_equals_a_fresh_run(simple_runs):
    _, off = simple_runs["fresh_off"]
    _, after = simple_runs["off_after"]
    for frame, expected in zip(after, off, strict=True):
        np.testing.assert_array_equal(frame, expected)
    assert processors(simple_runs["models"].generator.base.unet) == simple_runs["processors_before"]


def test_manifest_and_page_record_the_settings(simple_runs):
    manifest, _ = simple_runs["shared"]
    consistency = manifest.consistency
    assert consistency["shared_attention"] is True and consistency["group_size"] == 2
    assert consistency["sample_rate"] == 0.5 and consistency["layers"] == ["down", "mid", "up"]
    assert consistency["step_range"] == [0.0, 1.0] and consistency["anchor_frames"] == [1, 2]
    assert consistency["anchor_seeds"] == [f["seed"] for f in manifest.frames[:2]]
    assert consistency["kept_bytes"] > 0
    assert json.loads((simple_runs["root"] / "shared" / "manifest.json").read_text())["consistency"] == consistency
    page = (simple_runs["root"] / "shared" / "storyboard.html").read_text()
    assert "shared attention: sample_rate 0.5" in page and "group_size 2" in page
    assert simple_runs["off_after"][0].consistency == {"shared_attention": False}
    assert "shared attention: off" in (simple_runs["root"] / "off_after" / "storyboard.html").read_text()


def anchor_tokens(simple_runs, three_scene_story, *overrides: str) -> tuple[SharedTokens, list]:
    """The kept tokens of the three-scene story's anchor group, recorded through the loaded generator."""
    config = infer_config(three_scene_story, simple_runs["root"], *simple_runs["common"], *SHARED, *overrides)
    plans = plan_frames(config, load_story(config.story))
    gen = config.generation
    tokens = SharedTokens(config.consistency, [p.settings.seed for p in plans[:2]], gen.steps)
    simple_runs["models"].generator.record_shared_tokens(tokens, [p.prompt for p in plans[:2]], gen.negative_prompt,
                                                         [p.settings for p in plans[:2]], gen.width, gen.height,
                                                         gen.steps)
    return tokens, plans


def test_a_retried_frame_sees_the_same_shared_context(simple_runs, three_scene_story):
    """Token sampling is seeded by the anchor seeds: recording again keeps the same tokens, the storyboard's frame
    is reproduced from them, and generating other attempts in between changes nothing that a retry sees."""
    tokens, plans = anchor_tokens(simple_runs, three_scene_story)
    again, _ = anchor_tokens(simple_runs, three_scene_story)
    assert tokens.bank.keys() == again.bank.keys() and len(tokens.bank) > 0
    for key, kept in tokens.bank.items():
        torch.testing.assert_close(again.bank[key], kept, rtol=0, atol=0)
    generator = simple_runs["models"].generator
    gen = infer_config(three_scene_story, simple_runs["root"], *simple_runs["common"]).generation

    def frame(index: int, settings: Settings) -> np.ndarray:
        image = generator.generate(plans[index].prompt, gen.negative_prompt, settings, 64, 64, gen.steps,
                                   shared=SharedFrame(tokens, index))
        return np.asarray(image, dtype=np.int16)

    first = frame(1, plans[1].settings)
    np.testing.assert_array_equal(first, simple_runs["shared"][1][1])
    retry = frame(1, Settings(plans[1].settings.seed + 1000, plans[1].settings.guidance_scale))
    assert differs(retry, first)
    np.testing.assert_array_equal(frame(1, plans[1].settings), first)


def test_classifier_free_guidance_halves_share_within_themselves(simple_runs, three_scene_story):
    """With CFG the batch is [unconditional frames, conditional frames]: the conditional half must compute what a
    batch without CFG computes, which it cannot if its frames took tokens from the unconditional half."""
    with_cfg, _ = anchor_tokens(simple_runs, three_scene_story, "generation.guidance_scale=7.5")
    without, _ = anchor_tokens(simple_runs, three_scene_story, "generation.guidance_scale=1.0")
    first_step = [key for key in with_cfg.bank if key[1] == 0]
    assert first_step and all(with_cfg.bank[key].shape[0] == 2 for key in first_step)
    for key in first_step:  # within batch-size and thread-count noise (seen: 1.2e-4)
        torch.testing.assert_close(with_cfg.bank[key][1:], without.bank[key], rtol=1e-3, atol=1e-3)
    assert max((with_cfg.bank[key][:1] - without.bank[key]).abs().max() for key in first_step) > 1e-2


def test_layers_and_step_range_limit_where_tokens_are_kept(simple_runs, three_scene_story):
    tokens, _ = anchor_tokens(simple_runs, three_scene_story, "consistency.layers=[up]",
                              "consistency.step_range=[0.5,1.0]")
    assert tokens.bank and all(layer.startswith("up_blocks.") and layer.endswith(SELF_ATTENTION) and step == 1
                               for layer, step in tokens.bank)


def test_ref_guided_with_lora_shares_and_hands_the_models_back(tiny_model_dir, tiny_lora_dir, three_scene_story,
                                                               tmp_path):
    """IP-Adapter (attn2 processors) + ControlNet + LoRA: sharing changes the guided frames, and a plain ref_guided
    storyboard from the same models afterwards equals a fresh one."""
    common = ["mode=ref_guided", f"lora.path={tiny_lora_dir}"]
    _, fresh = render(infer_config(three_scene_story, tmp_path / "fresh", *common), tmp_path / "fresh")
    models = load_models(infer_config(three_scene_story, tmp_path, *common))
    manifest, shared = render(infer_config(three_scene_story, tmp_path / "shared", *common, *SHARED),
                              tmp_path / "shared", models)
    assert set(manifest.frames[1]["active_adapters"]) == {"lora", "ip_adapter", "controlnet"}
    assert differs(shared[1], fresh[1]) and differs(shared[2], fresh[2])
    _, after = render(infer_config(three_scene_story, tmp_path / "after", *common), tmp_path / "after", models)
    for frame, expected in zip(after, fresh, strict=True):
        np.testing.assert_array_equal(frame, expected)


@pytest.mark.parametrize("override, key", [
    ("consistency.sample_rate=1.5", "consistency.sample_rate"),
    ("consistency.layers=[left]", "consistency.layers"),
    ("consistency.layers=[]", "consistency.layers"),
    ("consistency.step_range=[0.8,0.2]", "consistency.step_range"),
    ("consistency.step_range=[0.5]", "consistency.step_range"),
    ("consistency.group_size=0", "consistency.group_size"),
])
def test_bad_settings_name_their_key(override, key, three_scene_story, tmp_path):
    """Values the schema checks raise ConfigError; a layer outside the Enum is refused by Hydra while composing."""
    with pytest.raises((ConfigError, ConfigCompositionException)) as failure:
        infer_config(three_scene_story, tmp_path, "mode=baseline", override)
    assert key in str(failure.value) + str(failure.value.__cause__)


@pytest.mark.parametrize("mode", ["simple+magic", "shared"])
def test_evaluate_refuses_unknown_modes_naming_the_key(mode, tmp_path):
    from aldar_lit.config.evaluate import to_eval_config

    from test_evaluate import compose_evaluate

    with pytest.raises(ConfigError, match=r"modes: unknown mode .*each also with \+shared"):
        to_eval_config(compose_evaluate([f"modes=[simple,{mode}]", "lora.path=/nonexistent/lora",
                                         f"paths.output_dir={tmp_path}"]))


@pytest.mark.slow
def test_evaluate_compares_modes_with_and_without_sharing(tmp_path, tiny_model_dir, demo_data_dir, tiny_lora_dir,
                                                          tiny_arcface_onnx):
    """evaluate.py with modes=[simple, simple+shared, ref_guided, ref_guided+shared] on the tiny model: the shared
    modes are generated with sharing, reported and compared beside the plain ones, and a manifest is reused only
    by a mode with the same sharing settings."""
    from aldar_lit.config.evaluate import to_eval_config
    from aldar_lit.evaluation.generation import expected_manifest, infer_config, mismatches, suite_stories
    from aldar_lit.evaluation.run import run

    from test_evaluate import compose_evaluate, read_csv, tiny_overrides

    modes = ["simple", "simple+shared", "ref_guided", "ref_guided+shared"]
    overrides = tiny_overrides(tmp_path, tiny_lora_dir, demo_data_dir, tiny_arcface_onnx, f"[{','.join(modes)}]")
    run(compose_evaluate(overrides))
    summary = read_csv(tmp_path / "summary.csv")
    assert {r["mode"] for r in summary} == set(modes)
    clip_t = {(r["mode"], r["seed"], r["frame"]): float(r["value"])
              for r in read_csv(tmp_path / "results.csv") if r["metric"] == "clip_t"}
    assert clip_t[("simple+shared", "0", "2")] != pytest.approx(clip_t[("simple", "0", "2")], abs=1e-6)
    pairs = {(r["treatment"], r["control"]) for r in read_csv(tmp_path / "comparisons.csv")}
    assert {("simple+shared", "simple"), ("ref_guided+shared", "ref_guided")} <= pairs
    assert "simple+shared − simple" in (tmp_path / "report.md").read_text()

    board = tmp_path / "generations" / "simple+shared" / "prompt_suite" / "seed0"
    manifest = read_storyboard_manifest(board)
    assert manifest.mode == "simple" and manifest.consistency["shared_attention"] is True
    cfg = to_eval_config(compose_evaluate(overrides))
    story = suite_stories(cfg, tmp_path)[0]
    for mode, settings, matches in (("simple+shared", [], True), ("simple", [], False),
                                    ("simple+shared", ["consistency.sample_rate=0.25"], False)):
        config = infer_config(to_eval_config(compose_evaluate([*overrides, *settings])), mode, story, 0,
                              str(tiny_lora_dir))
        assert (not mismatches(manifest, expected_manifest(config, plan_frames(config, story.scenes)))) is matches


def test_cost_benchmark_reports_each_group_size(tmp_path, tiny_model_dir):
    """benchmarks/bench_shared_attention.py on the tiny model: one row per group size; the kept tokens grow with
    the anchors (a frame keeps the same share of its tokens whatever the group)."""
    import subprocess
    import sys

    from fixtures_storyboard import REPO_ROOT

    out = tmp_path / "cost.json"
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bench_shared_attention.py"), "--model", "tiny",
                    "--steps", "2", "--repeats", "1", "--groups", "1,2", "--out", str(out)],
                   check=True, capture_output=True, cwd=tmp_path, timeout=300)
    result = json.loads(out.read_text())
    one, two = result["groups"]
    assert (one["group_size"], two["group_size"]) == (1, 2) and result["plain_frame_peak_bytes"] > 0
    assert one["kept_bytes"] > 0 and two["kept_bytes"] == 2 * one["kept_bytes"]
    assert all(row["record_seconds"] > 0 and row["frame_seconds"] > 0 and row["plain_frame_seconds"] > 0
               for row in (one, two))
