"""Storyboards end to end on the tiny model, with tiny IP-Adapter/ControlNet weights loaded by the real
diffusers loaders (64 px frames, 2 steps)."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from aldar_lit.config import ConfigError
from aldar_lit.pipelines.config import to_infer_config
from aldar_lit.pipelines.generator import AdapterError
from aldar_lit.pipelines.storyboard import load_models, make_storyboard, render_storyboard
from aldar_lit.pipelines.story import StoryError

from fixtures_storyboard import REPO_ROOT, TINY_GENERATION, compose_infer, tiny_lora_dir, write_story  # noqa: F401

TWO_SCENES = [{"text": "aldar_kose_man smiling in front of a yurt"},
              {"text": "aldar_kose_man walking across the steppe", "pose": "walking"}]


@pytest.fixture(scope="module")
def two_scene_story(tmp_path_factory) -> Path:
    return write_story(tmp_path_factory.mktemp("story") / "two.yaml", TWO_SCENES)


def storyboard(out_dir: Path, story: Path, *overrides: str) -> tuple[float, dict, list[np.ndarray]]:
    config = to_infer_config(compose_infer(["model=tiny", "adapters=tiny", "qa=off", f"story.file={story}",
                                            f"paths.output_dir={out_dir}", *TINY_GENERATION, *overrides]))
    metric = make_storyboard(config, out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    frames = [np.asarray(Image.open(out_dir / f["file"]), dtype=np.int16) for f in manifest["frames"]]
    return metric, manifest, frames


@pytest.fixture(scope="module")
def ref_guided_runs(tiny_model_dir, tiny_lora_dir, two_scene_story, tmp_path_factory):
    """The same two-frame ref_guided story with the configured scales, and with each adapter at 0."""
    root = tmp_path_factory.mktemp("ref_guided")
    common = ["mode=ref_guided", f"lora.path={tiny_lora_dir}"]
    return {
        "root": root,
        **{name: storyboard(root / name, two_scene_story, *common, *extra)
        for name, extra in {
            "configured": [],
            "ip_scale_0": ["adapters.ip_adapter.scale=0.0"],
            "controlnet_scale_0": ["adapters.controlnet.conditioning_scale=0.0"],
        }.items()},
    }


def test_ip_adapter_and_controlnet_change_frames_2_to_n(ref_guided_runs):
    _, _, configured = ref_guided_runs["configured"]
    _, _, no_ip = ref_guided_runs["ip_scale_0"]
    _, _, no_control = ref_guided_runs["controlnet_scale_0"]
    assert np.abs(configured[1] - no_ip[1]).max() > 2, "the IP-Adapter does not change frame 2"
    assert np.abs(configured[1] - no_control[1]).max() > 2, "the ControlNet does not change frame 2"


def test_models_are_reused_across_ref_guided_storyboards(ref_guided_runs, tiny_lora_dir, two_scene_story,
                                                        tmp_path):
    """Loaded once, the IP-Adapter must not break the next storyboard's unguided frame 1, nor change frames."""
    config = to_infer_config(compose_infer(["model=tiny", "adapters=tiny", "qa=off", "mode=ref_guided",
                                            f"lora.path={tiny_lora_dir}", f"story.file={two_scene_story}",
                                            f"paths.output_dir={tmp_path}", *TINY_GENERATION]))
    models = load_models(config)
    for attempt in ("first", "second"):
        manifest = render_storyboard(config, tmp_path / attempt, models)
        frames = [np.asarray(Image.open(tmp_path / attempt / f["file"]), dtype=np.int16) for f in manifest["frames"]]
        for frame, expected in zip(frames, ref_guided_runs["configured"][2], strict=True):
            np.testing.assert_array_equal(frame, expected)


def test_fresh_runs_reproduce_frame_1(ref_guided_runs):
    """Three independent runs (models loaded afresh each time) give the same frame 1; frames 2..N are compared
    across processes in the slow `test_infer_script_writes_the_storyboard`."""
    firsts = [ref_guided_runs[name][2][0] for name in ("configured", "ip_scale_0", "controlnet_scale_0")]
    assert all(np.array_equal(firsts[0], other) for other in firsts[1:])


def test_output_files(ref_guided_runs):
    """Frames carry prompt/seed/CFG as PNG text; the contact sheet and a self-contained HTML page are written."""
    _, manifest, frames = ref_guided_runs["configured"]
    run_dir = ref_guided_runs["root"] / "configured"
    assert [f["file"] for f in manifest["frames"]] == ["frames/01.png", "frames/02.png"]
    for frame in manifest["frames"]:
        png = Image.open(run_dir / frame["file"])
        assert png.size == (64, 64)
        assert png.text["prompt"] == frame["prompt"] and png.text["seed"] == str(frame["seed"])
        assert png.text["guidance_scale"] == str(frame["guidance_scale"]) and png.text["mode"] == "ref_guided"
    assert frames[0].shape == (64, 64, 3)
    sheet = Image.open(run_dir / "storyboard.png")
    assert sheet.width >= 2 * 64 and sheet.height > 256
    page = (run_dir / "storyboard.html").read_text()
    inlined = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(inlined) == 2 and "http" not in page
    assert base64.b64decode(inlined[0]).startswith(b"\x89PNG")
    assert "walking across the steppe" in page and "no face found in frame 1" in page


def test_manifest_records_adapters_for_frames_2_to_n_only(ref_guided_runs, tiny_lora_dir):
    _, manifest, _ = ref_guided_runs["configured"]
    assert manifest["status"] == "complete" and manifest["mode"] == "ref_guided"
    first, second = manifest["frames"]
    assert set(first["active_adapters"]) == {"lora"} and first["pose"] is None
    assert set(second["active_adapters"]) == {"lora", "ip_adapter", "controlnet"}
    assert second["active_adapters"]["ip_adapter"]["scale"] == 0.7
    assert second["active_adapters"]["controlnet"]["conditioning_scale"] == 0.8
    assert second["active_adapters"]["lora"]["path"] == str(tiny_lora_dir)
    assert second["pose"] == "walking"
    _, no_ip_manifest, _ = ref_guided_runs["ip_scale_0"]
    assert no_ip_manifest["frames"][1]["active_adapters"]["ip_adapter"]["scale"] == 0.0


def test_no_face_in_frame_1_falls_back_with_a_recorded_warning(ref_guided_runs):
    """Random tiny-model frames hold no face: the whole frame 1 conditions the IP-Adapter, and the manifest says so."""
    _, manifest, _ = ref_guided_runs["configured"]
    assert manifest["identity_reference"] == {"source": "frame 1", "face": None, "fallback": "whole image"}
    assert any("no face found in frame 1" in w and "whole image" in w for w in manifest["warnings"])
    assert any("no face found in frame 1" in w for w in manifest["frames"][0]["warnings"])


def test_simple_mode_lora_differs_from_baseline(tiny_model_dir, tiny_lora_dir, tmp_path):
    story = write_story(tmp_path / "one.yaml", TWO_SCENES[:1])
    _, base_manifest, baseline = storyboard(tmp_path / "baseline", story, "mode=baseline")
    _, simple_manifest, simple = storyboard(tmp_path / "simple", story, "mode=simple", f"lora.path={tiny_lora_dir}")
    assert np.abs(baseline[0] - simple[0]).max() > 2
    assert base_manifest["frames"][0]["active_adapters"] == {}
    assert set(simple_manifest["frames"][0]["active_adapters"]) == {"lora"}


def test_qa_auto_fix_retries_and_keeps_the_best_attempt(tiny_model_dir, tmp_path):
    """Random tiny-model frames hold no face: QA retries with CFG 6.5 and a new seed, then keeps the best, flagged."""
    story = write_story(tmp_path / "one.yaml", TWO_SCENES[:1])
    metric, manifest, frames = storyboard(tmp_path / "run", story, "mode=baseline", "qa=tiny", "qa.max_attempts=3")
    frame = manifest["frames"][0]
    attempts = frame["attempts"]
    assert [a["seed"] for a in attempts] == [42, 1042, 2042]
    assert [a["guidance_scale"] for a in attempts] == [7.5, 6.5, 6.5]
    assert attempts[0]["fix"] is None and attempts[1]["fix"].startswith("no_face")
    assert all(a["qa"]["failures"] == ["no_face"] for a in attempts)
    scores = [a["qa"]["scores"]["prompt_clip_t"] for a in attempts]
    assert frame["chosen_attempt"] == int(np.argmax(scores)), "among equal failures the best CLIP-T is kept"
    assert frame["seed"] == attempts[frame["chosen_attempt"]]["seed"]
    assert frame["flagged"] is True and metric == 0.0
    assert any("no attempt passed QA in 3" in w for w in frame["warnings"])


@pytest.mark.slow  # a fresh Python process: ~15 s of imports on a loaded 2-core machine
def test_infer_script_writes_the_storyboard(tiny_model_dir, tiny_lora_dir, cache_dir, two_scene_story, tmp_path,
                                            ref_guided_runs):
    """infer.py as a user runs it (QA on: tiny CLIP + Haar): the files land in Hydra's run dir, and the frames
    are identical to the same config run in another process."""
    out = tmp_path / "run"
    env = {**os.environ, "ALDAR_LIT_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    result = subprocess.run(
        [sys.executable, "infer.py", "model=tiny", "adapters=tiny", "qa=tiny", "qa.max_attempts=1", "mode=ref_guided",
         f"lora.path={tiny_lora_dir}", f"story.file={two_scene_story}", f"hydra.run.dir={out}", *TINY_GENERATION],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["frames"]) == 2
    _, _, in_process = ref_guided_runs["configured"]
    for frame, same_config in zip(manifest["frames"], in_process):
        attempts = frame["attempts"]
        assert len(attempts) == 1 and attempts[0]["qa"]["failures"] == ["no_face"]
        assert isinstance(attempts[0]["qa"]["scores"]["prompt_clip_t"], float)
        assert frame["flagged"] is True and attempts[0]["seconds"]["generate"] > 0
        png = Image.open(out / frame["file"])
        assert np.array_equal(np.asarray(png, dtype=np.int16), same_config), "same config, other process: same frame"
        assert png.text["prompt"] == frame["prompt"]
    assert (out / "storyboard.html").is_file() and (out / "storyboard.png").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()


def test_frames_made_before_a_failure_are_kept(tiny_model_dir, tiny_lora_dir, two_scene_story, tmp_path, cache_dir):
    """A ControlNet whose weights file is broken fails when loaded, after frame 1: frame 1 and the manifest stay."""
    from aldar_lit.pipelines.tiny_adapters import materialise_tiny_controlnet

    good = materialise_tiny_controlnet(tiny_model_dir, cache_dir / "adapters" / "tiny-controlnet-openpose-seed0")
    broken = tmp_path / "broken-controlnet"
    shutil.copytree(good, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "run"
    with pytest.raises(AdapterError, match="adapters.controlnet.pretrained: cannot load"):
        storyboard(out, two_scene_story, "mode=ref_guided", f"lora.path={tiny_lora_dir}",
                   f"adapters.controlnet.pretrained={broken}", "adapters.controlnet.random_init=null")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "AdapterError" in manifest["error"]
    assert [f["file"] for f in manifest["frames"]] == ["frames/01.png"]
    assert (out / "frames/01.png").is_file() and not (out / "frames/02.png").exists()
    assert (out / "storyboard.html").is_file()


def test_bad_inputs_fail_before_any_frame(tiny_model_dir, tiny_lora_dir, two_scene_story, tmp_path):
    with pytest.raises(StoryError, match="has no scenes"):
        storyboard(tmp_path / "a", write_story(tmp_path / "empty.yaml", []), "mode=baseline")
    with pytest.raises(StoryError, match=r"scenes\[0\].pose: unknown pose 'moonwalk'"):
        storyboard(tmp_path / "b", write_story(tmp_path / "p.yaml", [{"text": "x", "pose": "moonwalk"}]),
                   "mode=baseline")
    with pytest.raises(AdapterError, match="lora: .*no such directory"):
        storyboard(tmp_path / "c", two_scene_story, "mode=simple", f"lora.path={tmp_path / 'missing'}")
    with pytest.raises(AdapterError, match="adapters.ip_adapter: no such file"):
        storyboard(tmp_path / "d", two_scene_story, "mode=ref_guided", f"adapters.ip_adapter.repo={tmp_path / 'none'}",
                   "adapters.ip_adapter.random_init=null")
    with pytest.raises(AdapterError, match="adapters.controlnet.pretrained: no ControlNet"):
        storyboard(tmp_path / "e", two_scene_story, "mode=ref_guided",
                   f"adapters.controlnet.pretrained={tmp_path / 'none'}", "adapters.controlnet.random_init=null")
    with pytest.raises(ConfigError, match="lora.path: mode=simple is SDXL \\+ LoRA"):
        storyboard(tmp_path / "f", two_scene_story, "mode=simple")
    with pytest.raises(ConfigError, match="mode: must be one of"):
        storyboard(tmp_path / "g", two_scene_story, "mode=fancy")
    assert not any((tmp_path / name / "frames").exists() for name in "abcdefg")


def test_adapters_for_another_base_model_are_refused(tiny_model_dir, tiny_lora_dir, two_scene_story, tmp_path,
                                                    cache_dir):
    from aldar_lit.pipelines.tiny_adapters import (IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS,
                                                   materialise_tiny_controlnet, materialise_tiny_ip_adapter)

    wide = {k: torch.zeros(v.shape[0], v.shape[1] * 2) if ".down." in k else v
            for k, v in load_file(tiny_lora_dir / "pytorch_lora_weights.safetensors").items()}
    (tmp_path / "wide_lora").mkdir()
    save_file(wide, tmp_path / "wide_lora" / "pytorch_lora_weights.safetensors")
    with pytest.raises(AdapterError, match="lora: .*does not fit the base model.*size mismatch"):
        storyboard(tmp_path / "a", two_scene_story, "mode=simple", f"lora.path={tmp_path / 'wide_lora'}")

    ip = shutil.copytree(materialise_tiny_ip_adapter(tiny_model_dir, cache_dir / "adapters/tiny-ip-adapter-seed0"),
                         tmp_path / "ip")
    weights = ip / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHTS
    save_file({k: torch.zeros(v.shape[0], 2048) if "to_k_ip" in k or "to_v_ip" in k else v
               for k, v in load_file(weights).items()}, weights)
    with pytest.raises(AdapterError, match="adapters.ip_adapter: .*cross-attention width 2048, the base model has 64"):
        storyboard(tmp_path / "b", two_scene_story, "mode=ref_guided", f"adapters.ip_adapter.repo={ip}",
                   "adapters.ip_adapter.random_init=null")

    tiny_controlnet = materialise_tiny_controlnet(tiny_model_dir, cache_dir / "adapters/tiny-controlnet-openpose-seed0")
    cn = shutil.copytree(tiny_controlnet, tmp_path / "cn")
    config = json.loads((cn / "config.json").read_text())
    (cn / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 2048}))
    with pytest.raises(AdapterError, match="adapters.controlnet.pretrained: .*cross_attention_dim=2048.*has 64"):
        storyboard(tmp_path / "c", two_scene_story, "mode=ref_guided", f"adapters.controlnet.pretrained={cn}",
                   "adapters.controlnet.random_init=null")
