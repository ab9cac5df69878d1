"""Storyboards end to end on the tiny model, with tiny IP-Adapter/ControlNet weights loaded by the real
diffusers loaders (64 px frames, 2 steps)."""

import base64
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aldar_lit.artifacts import read_adapter_card, write_adapter_card
from aldar_lit.config import ConfigError
from aldar_lit.config.infer import to_infer_config
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
        frames = [np.asarray(Image.open(tmp_path / attempt / f["file"]), dtype=np.int16) for f in manifest.frames]
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
    tensors = len(load_file(tiny_lora_dir / "pytorch_lora_weights.safetensors"))
    assert manifest["lora"] == {"path": str(tiny_lora_dir), "scale": 1.0, "tensors": tensors, "applied": tensors,
                                "unmatched": []}


def test_no_face_in_frame_1_falls_back_with_a_recorded_warning(ref_guided_runs):
    """Random tiny-model frames hold no face: the whole frame 1 conditions the IP-Adapter, and the manifest says so."""
    _, manifest, _ = ref_guided_runs["configured"]
    assert manifest["identity_reference"] == {"source": "frame 1", "face": None, "fallback": "whole image"}
    assert any("no face found in frame 1" in w and "whole image" in w for w in manifest["warnings"])
    assert any("no face found in frame 1" in w for w in manifest["frames"][0]["warnings"])


def test_baseline_is_sdxl_alone_even_with_a_lora_path(tiny_model_dir, tiny_lora_dir, tmp_path, caplog):
    """mode=baseline with lora.path set makes the frames of baseline without it, says so in the log and the manifest,
    and lists no LoRA; mode=simple applies the LoRA."""
    story = write_story(tmp_path / "one.yaml", TWO_SCENES[:1])
    _, _, baseline = storyboard(tmp_path / "baseline", story, "mode=baseline")
    with caplog.at_level("WARNING", logger="aldar_lit.pipelines.storyboard"):
        _, ignored_manifest, ignored = storyboard(tmp_path / "ignored", story, "mode=baseline",
                                                  f"lora.path={tiny_lora_dir}")
    _, simple_manifest, simple = storyboard(tmp_path / "simple", story, "mode=simple", f"lora.path={tiny_lora_dir}")
    np.testing.assert_array_equal(ignored[0], baseline[0])
    assert np.abs(baseline[0] - simple[0]).max() > 2
    notice = f"mode=baseline is SDXL alone: lora.path={tiny_lora_dir} is ignored"
    assert notice in caplog.text and notice in ignored_manifest["warnings"]
    assert ignored_manifest["lora"] == {"path": None, "scale": 1.0, "ignored": str(tiny_lora_dir)}
    assert ignored_manifest["frames"][0]["active_adapters"] == {}
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
    assert frame["chosen_attempt"] == int(np.argmax(scores)) + 1, "among equal failures the best CLIP-T is kept"
    kept = attempts[frame["chosen_attempt"] - 1]
    assert kept["attempt"] == frame["chosen_attempt"] and frame["seed"] == kept["seed"]  # both count from 1
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
    from aldar_lit.offline.tiny_adapters import materialise_tiny_controlnet

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
    with pytest.raises(ConfigCompositionException, match="override mode=fancy") as failure:  # an Enum field
        storyboard(tmp_path / "g", two_scene_story, "mode=fancy")
    assert "expected one of [baseline, simple, ref_guided]" in str(failure.value.__cause__)
    assert not any((tmp_path / name / "frames").exists() for name in "abcdefg")


def test_adapters_for_another_base_model_are_refused(tiny_model_dir, tiny_lora_dir, two_scene_story, tmp_path,
                                                    cache_dir):
    from aldar_lit.offline.tiny_adapters import (IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS,
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


# The precisions the shipped model configs allow, through the same config keys: model=sdxl_base (bf16 weights, fp32
# VAE); fp16 weights with the stock SDXL VAE in fp16, which diffusers upcasts to decode (its config says force_upcast);
# an fp16 VAE without force_upcast, like madebyollin/sdxl-vae-fp16-fix (the tiny VAE's config), under bf16 weights.
PRECISIONS = {
    "bf16_weights_fp32_vae": ["model.dtype=bfloat16", "model.vae_dtype=float32"],
    "fp16_weights_fp16_vae_upcast": ["model.dtype=float16", "model.vae_dtype=float16", "model.vae={upcast_vae}"],
    "bf16_weights_fp16_fix_vae": ["model.dtype=bfloat16", "model.vae_dtype=float16"],
    "fp32": [],
}
MODE_OVERRIDES = {"baseline": ["mode=baseline"], "simple": ["mode=simple", "lora.path={lora}"],
                  "ref_guided": ["mode=ref_guided", "lora.path={lora}"]}


@pytest.fixture(scope="module")
def upcast_vae(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny VAE with `force_upcast: true`, as in the stock SDXL VAE's config (a `model.vae` override)."""
    vae = shutil.copytree(tiny_model_dir / "vae", tmp_path_factory.mktemp("vae") / "vae")
    config = json.loads((vae / "config.json").read_text())
    (vae / "config.json").write_text(json.dumps({**config, "force_upcast": True}))
    return vae


@pytest.fixture(scope="module")
def precision_runs(tiny_lora_dir, two_scene_story, upcast_vae, ref_guided_runs, tmp_path_factory):
    """Storyboards by (precision, mode), made on first use; fp32 ref_guided is the configured run above."""
    runs = {("fp32", "ref_guided"): ref_guided_runs["configured"]}
    root = tmp_path_factory.mktemp("precisions")

    def get(precision: str, mode: str):
        if (precision, mode) not in runs:
            overrides = [o.format(lora=tiny_lora_dir, upcast_vae=upcast_vae)
                         for o in (*MODE_OVERRIDES[mode], *PRECISIONS[precision])]
            runs[precision, mode] = storyboard(root / f"{precision}-{mode}", two_scene_story, *overrides)
        return runs[precision, mode]

    return get


@pytest.mark.parametrize("mode", sorted(MODE_OVERRIDES))
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_storyboards_in_the_shipped_precisions(precision, mode, precision_runs):
    """Every mode completes in every precision, computes in it, and makes the fp32 frames up to rounding."""
    _, manifest, frames = precision_runs(precision, mode)
    assert manifest["status"] == "complete" and len(frames) == 2
    expected = {"bf16_weights_fp32_vae": ("bfloat16", "float32", False),
                "fp16_weights_fp16_vae_upcast": ("float16", "float16", True),
                "bf16_weights_fp16_fix_vae": ("bfloat16", "float16", False), "fp32": ("float32", "float32", False)}
    unet, vae, upcast = expected[precision]
    assert manifest["precision"] == {"unet": unet, "text_encoders": unet, "vae": vae, "vae_force_upcast": upcast}
    _, _, fp32_frames = precision_runs("fp32", mode)
    for frame, fp32_frame in zip(frames, fp32_frames, strict=True):
        assert frame.std() > 5, "a blank frame (NaN latents?)"
        assert np.corrcoef(frame.ravel(), fp32_frame.ravel())[0, 1] > 0.9  # other frames: < 0.1


def test_prediction_type_from_the_config_or_the_adapter_card(tiny_model_dir, tiny_lora_dir, tmp_path):
    """generation.prediction_type=v_prediction, or an adapter card that says v_prediction, puts it on the scheduler
    (other frames than epsilon's); the manifest records it and where it came from."""
    story = write_story(tmp_path / "one.yaml", TWO_SCENES[:1])
    v_lora = shutil.copytree(tiny_lora_dir, tmp_path / "v_lora")
    write_adapter_card(v_lora, dataclasses.replace(read_adapter_card(v_lora), prediction_type="v_prediction"))
    _, epsilon_manifest, epsilon = storyboard(tmp_path / "epsilon", story, "mode=simple", f"lora.path={tiny_lora_dir}")
    _, config_manifest, by_config = storyboard(tmp_path / "config", story, "mode=simple", f"lora.path={tiny_lora_dir}",
                                               "generation.prediction_type=v_prediction")
    _, card_manifest, by_card = storyboard(tmp_path / "card", story, "mode=simple", f"lora.path={v_lora}")
    assert np.abs(epsilon[0] - by_config[0]).max() > 2
    np.testing.assert_array_equal(by_card[0], by_config[0])
    scheduler = {"class": "EulerDiscreteScheduler", "adapter_card": None}
    assert epsilon_manifest["scheduler"] == {**scheduler, "prediction_type": "epsilon",
                                             "source": "base model scheduler"}
    assert config_manifest["scheduler"] == {**scheduler, "prediction_type": "v_prediction",
                                            "source": "generation.prediction_type"}
    assert card_manifest["scheduler"] == {**scheduler, "prediction_type": "v_prediction",
                                          "source": "adapter card (adapter_card.json)", "adapter_card": "v_prediction"}
    with pytest.raises(ConfigCompositionException, match="override generation.prediction_type=sample") as failure:
        storyboard(tmp_path / "bad", story, "mode=baseline", "generation.prediction_type=sample")
    assert "expected one of [epsilon, v_prediction]" in str(failure.value.__cause__)


def test_a_lora_that_partly_fits_is_refused_unless_allowed(tiny_model_dir, tiny_lora_dir, tmp_path):
    """A real adapter file with some keys renamed, loaded by diffusers' load_lora_weights: refused naming the count
    and the keys; with lora.allow_partial=true the rest is applied and the manifest says what was."""
    story = write_story(tmp_path / "one.yaml", TWO_SCENES[:1])
    weights = tiny_lora_dir / "pytorch_lora_weights.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()  # the LoRA config (alpha) travels in the file's metadata
    state = load_file(weights)
    renamed = {k: k.replace(".to_q.", ".to_query.") if k.startswith("unet.up_blocks") else k for k in state}
    unmatched = sorted(new for old, new in renamed.items() if new != old)
    assert 0 < len(unmatched) < len(state)
    partial = shutil.copytree(tiny_lora_dir, tmp_path / "partial")
    save_file({renamed[k]: v for k, v in state.items()}, partial / weights.name, metadata=metadata)
    count = f"{len(unmatched)} of its {len(state)} tensors fit no module of the base model"
    with pytest.raises(AdapterError, match=rf"lora: .*: {count} .*to_query.*lora.allow_partial=true uses the"):
        storyboard(tmp_path / "refused", story, "mode=simple", f"lora.path={partial}")
    refused = json.loads((tmp_path / "refused" / "manifest.json").read_text())
    assert refused["status"] == "failed" and refused["frames"] == []

    _, manifest, frames = storyboard(tmp_path / "allowed", story, "mode=simple", f"lora.path={partial}",
                                     "lora.allow_partial=true")
    assert manifest["status"] == "complete" and len(frames) == 1
    lora = manifest["lora"]
    assert (lora["tensors"], lora["applied"]) == (len(state), len(state) - len(unmatched))
    assert sorted(lora["unmatched"]) == unmatched
    assert any(f"{len(unmatched)} of {len(state)} tensors" in w and "not applied" in w for w in manifest["warnings"])


def infer_env(cache_dir: Path) -> dict[str, str]:
    env = {**os.environ, "ALDAR_LIT_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_API_KEY", None)
    return env


def test_sigterm_keeps_the_finished_frames_and_exits_non_zero(tiny_model_dir, cache_dir, tmp_path):
    """infer.py as a process, sent a real SIGTERM once frame 1 exists: the manifest says interrupted, the finished
    frames and their storyboard sheets stay, nothing half-written is left, and the exit code is 128 + 15."""
    scenes = 40
    story = write_story(tmp_path / "long.yaml", [{"text": f"aldar_kose_man, scene {i}"} for i in range(scenes)])
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "infer.py", "model=tiny", "qa=off", "mode=baseline", f"story.file={story}",
         f"hydra.run.dir={out}", *TINY_GENERATION],
        cwd=REPO_ROOT, env=infer_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while not (out / "frames" / "01.png").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no frame within 240 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    done = len(manifest["frames"])
    assert manifest["status"] == "interrupted" and 1 <= done < scenes
    assert manifest["error"] == f"stopped by SIGTERM after {done} of {scenes} frames"
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"{i:02d}.png" for i in range(1, done + 1)]
    assert Image.open(out / "storyboard.png").height > 0
    assert len(re.findall(r'src="data:image/png;base64,', (out / "storyboard.html").read_text())) == done
    assert "stopped by SIGTERM" in stdout + stderr and "Traceback" not in stderr  # Hydra logs to stdout


ROOM_BYTES = 128 * 1024  # room for two 64-px frames and the manifest, not for storyboard.png (~200 KiB)


@pytest.fixture(params=["full_tmpfs", pytest.param("file_size_limit", marks=pytest.mark.slow)])  # same path, other fault
def nearly_full_disk(request, tmp_path):
    """(output dir, preexec_fn for infer.py, the OS's reason): a real tmpfs filled up to ROOM_BYTES free (where it
    can be mounted), and the kernel's per-process file size limit of ROOM_BYTES (everywhere)."""
    if request.param == "full_tmpfs":
        disk = request.getfixturevalue("full_disk_dir")
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(bytes(free - ROOM_BYTES))
        return disk / "out", None, "No space left on device"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (ROOM_BYTES, ROOM_BYTES))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process

    return tmp_path / "out", limit_file_size, "File too large"


def test_a_full_disk_is_recorded_in_the_manifest_naming_the_file(tiny_model_dir, cache_dir, two_scene_story,
                                                                 nearly_full_disk, tmp_path):
    """storyboard.png does not fit: infer.py fails once, naming the file and the reason; the manifest says so
    (not `running`), although writing the sheets fails again while recording it; the frames stay."""
    out, preexec_fn, reason = nearly_full_disk
    result = subprocess.run(
        [sys.executable, "infer.py", "model=tiny", "qa=off", "mode=baseline", f"story.file={two_scene_story}",
         f"hydra.run.dir={tmp_path / 'hydra'}", f"paths.output_dir={out}", *TINY_GENERATION],
        cwd=REPO_ROOT, env=infer_env(cache_dir), capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn,
    )
    error = f"{reason} while writing {out / 'storyboard.png'}"
    assert result.returncode == 1 and error in result.stderr, result.stderr[-3000:]
    assert "During handling of the above exception" not in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and error in manifest["error"] and "WriteError" in manifest["error"]
    assert any(w.startswith("storyboard sheets not written") and error in w for w in manifest["warnings"])
    assert sorted(p.name for p in out.iterdir()) == ["frames", "manifest.json"]  # no temporaries left
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["01.png", "02.png"]
