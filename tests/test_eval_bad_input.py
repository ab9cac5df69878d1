"""Evaluation bad input, each refused before any model loads (or reported while other metrics still run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aldar_lit.artifacts import StoryboardManifest, read_storyboard_manifest, write_storyboard_manifest
from aldar_lit.config import ConfigError
from aldar_lit.config.evaluate import IdentityConfig
from aldar_lit.evaluation.generation import ManifestError, StoryboardRun, collect_storyboards
from aldar_lit.evaluation.metrics import Scorers, measure, summarise
from aldar_lit.evaluation.run import evaluate_sweep
from aldar_lit.quality.face_identity import build_identity_embedders
from fixtures_eval import astronaut, cat, dlib_embedder, tiny_arcface_onnx  # noqa: F401
from test_evaluate import PROMPTS, compose_evaluate


def eval_config(tmp_path: Path, *extra: str):
    from aldar_lit.config.evaluate import to_eval_config

    return to_eval_config(compose_evaluate([
        "model=tiny", "adapters=tiny", "qa=tiny", "scorer=tiny", f"lora.path={tmp_path / 'lora'}",
        "generation.width=64", "generation.height=64", "generation.steps=2", f"suite.prompts={json.dumps(PROMPTS)}",
        "suite.seeds=[0]", "suite.style=''", f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path}",
        *extra]))


def test_unknown_mode_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"modes: unknown mode 'lora_only'; known modes: \['baseline'"):
        eval_config(tmp_path, "modes=[baseline,lora_only]")


def test_empty_prompt_suite_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="suite.prompts: the prompt suite is empty"):
        eval_config(tmp_path, "suite.prompts=[]")


def test_lora_modes_need_an_adapter(tmp_path):
    with pytest.raises(ConfigError, match="lora.path"):
        eval_config(tmp_path, "lora.path=null")


def test_missing_manifest_is_named(tmp_path):
    cfg = eval_config(tmp_path, "modes=[baseline]", f"frames_from=[{tmp_path / 'infer_run'}]")
    with pytest.raises(ManifestError, match=r"infer_run/manifest.json'?: no manifest"):
        collect_storyboards(cfg, tmp_path / "out", cfg.lora.path, cfg.modes)


def write_manifest(run_dir: Path, mode: str, prompts: list[str], seeds: list[int], images) -> None:
    frames = []
    for index, (prompt, seed, image) in enumerate(zip(prompts, seeds, images), start=1):
        (run_dir / "frames").mkdir(parents=True, exist_ok=True)
        image.save(run_dir / "frames" / f"{index:02d}.png")
        frames.append({"index": index, "file": f"frames/{index:02d}.png", "prompt": prompt, "seconds": 1.5,
                       "chosen_attempt": 1, "attempts": [{"seed": seed, "guidance_scale": 7.5, "qa": {"failures": []}}]})
    write_storyboard_manifest(run_dir, StoryboardManifest(
        status="complete", mode=mode, base_model="x", lora={"path": None, "scale": 1.0}, qa={"enabled": True},
        frames=frames))


def test_mismatched_manifest_is_refused_with_its_differences(tmp_path):
    run_dir = tmp_path / "infer_run"
    write_manifest(run_dir, "simple", ["something else"], [7], [cat()])
    cfg = eval_config(tmp_path, "modes=[baseline]", f"frames_from=[{run_dir}]")
    with pytest.raises(ManifestError, match=r"match no storyboard.*mode: manifest has 'simple'"):
        collect_storyboards(cfg, tmp_path / "out", cfg.lora.path, cfg.modes)
    (run_dir / "frames" / "01.png").unlink()
    with pytest.raises(ManifestError, match=r"frames\[0\] names 'frames/01.png', which is not on disk"):
        collect_storyboards(cfg, tmp_path / "out", cfg.lora.path, cfg.modes)


def test_frames_without_faces_are_counted_not_dropped(tmp_path, dlib_embedder):
    from aldar_lit.quality.clip_scorer import ClipScorer

    run_dir = tmp_path / "board"
    images = [astronaut(), cat(), astronaut().transpose(0)]
    write_manifest(run_dir, "simple", ["a", "b", "c"], [1, 2, 3], images)
    run = StoryboardRun("simple", "story", 0, run_dir, read_storyboard_manifest(run_dir), True)
    scorers = Scorers(ClipScorer("aldar-tiny-clip", None), None, {"dlib": dlib_embedder})
    measured = measure([run], scorers, references=[astronaut()])
    value = {(r["metric"], r["frame"]): r["value"] for r in measured.rows}
    assert [value[("face_detected/dlib", i)] for i in (1, 2, 3)] == [1.0, 0.0, 1.0]
    assert np.isnan(value[("id_to_frame1/dlib", 1)]) and np.isnan(value[("id_to_frame1/dlib", 2)])
    assert value[("id_to_frame1/dlib", 3)] > 0.95  # the mirrored astronaut is the same person
    assert value[("id_to_train/dlib", 1)] == pytest.approx(1.0, abs=1e-5)
    assert value[("story_consistency/dlib", 0)] > 0.95  # only the one pair of detected faces
    summary = {r["metric"]: r for r in summarise(measured.rows, ["simple"], 200, 0.95, 0)}
    assert (summary["face_detected/dlib"]["n"], summary["face_detected/dlib"]["n_total"]) == (3, 3)
    assert summary["face_detected/dlib"]["mean"] == pytest.approx(2 / 3)
    assert (summary["id_to_train/dlib"]["n"], summary["id_to_train/dlib"]["n_total"]) == (2, 3)
    assert measured.heatmaps[("simple", "story", 0, "dlib")].shape == (3, 3)


def test_absent_insightface_pack_skips_only_that_backend(tmp_path):
    loaded, unavailable = build_identity_embedders(IdentityConfig(backends=["insightface", "dlib"],
                                                                  insightface_root=str(tmp_path)))
    assert list(loaded) == ["dlib"]
    assert "buffalo_l" in unavailable["insightface"] and "other metrics still run" in unavailable["insightface"]


def test_unknown_identity_backend_is_named():
    with pytest.raises(ConfigError, match=r"identity.backends: must be one of \['insightface', 'arcface_onnx', 'dlib'\], "
                                          "got 'facenet'"):
        IdentityConfig(backends=["facenet"])


def test_sweep_dir_without_runs(tmp_path):
    cfg = eval_config(tmp_path, f"sweep_dir={tmp_path / 'sweep'}", "modes=[simple]")
    with pytest.raises(FileNotFoundError, match="sweep_dir: no run with a summary.json"):
        evaluate_sweep(cfg, tmp_path / "out")


def matching_manifest(cfg, mode: str, seed: int) -> tuple[StoryboardManifest, list]:
    """The manifest infer.py would write for this evaluation's (mode, prompt suite, seed), and the frame plans."""
    from aldar_lit.evaluation.generation import infer_config, suite_stories
    from aldar_lit.pipelines.storyboard import plan_frames

    story = suite_stories(cfg, Path(cfg.paths.output_dir))[0]
    config = infer_config(cfg, mode, story, seed, cfg.lora.path)
    plans = plan_frames(config, story.scenes)
    ip, cn = cfg.adapters.ip_adapter, cfg.adapters.controlnet
    frames = [{"index": p.index, "file": f"frames/{p.index:02d}.png", "prompt": p.prompt, "seconds": 1.0,
               "chosen_attempt": 1,
               "attempts": [{"seed": p.settings.seed, "guidance_scale": p.settings.guidance_scale}],
               "active_adapters": {} if mode != "ref_guided" or p.index == 1 else {
                   "ip_adapter": {"scale": ip.scale}, "controlnet": {"conditioning_scale": cn.conditioning_scale}}}
              for p in plans]
    gen = cfg.generation
    manifest = StoryboardManifest(status="complete", mode=mode, base_model=cfg.model.pretrained,
                                  lora={"path": None if mode == "baseline" else cfg.lora.path, "scale": 1.0},
                                  qa={"enabled": True}, frames=frames,
                                  generation={"width": gen.width, "height": gen.height, "steps": gen.steps,
                                              "negative_prompt": gen.negative_prompt})
    return manifest, plans


def test_manifest_matching_checks_cfg_and_adapter_scales(tmp_path):
    from aldar_lit.evaluation.generation import expected_manifest, infer_config, mismatches, suite_stories

    cfg = eval_config(tmp_path, "modes=[ref_guided]")
    manifest, plans = matching_manifest(cfg, "ref_guided", 0)
    frames = manifest.frames
    story = suite_stories(cfg, tmp_path / "out")[0]
    expected = expected_manifest(infer_config(cfg, "ref_guided", story, 0, cfg.lora.path), plans)
    assert mismatches(manifest, expected) == []
    frames[1]["attempts"][0]["guidance_scale"] = 5.0
    assert [m.split(":")[0] for m in mismatches(manifest, expected)] == ["first_settings"]
    frames[1]["attempts"][0]["guidance_scale"] = plans[1].settings.guidance_scale
    frames[1]["active_adapters"]["ip_adapter"]["scale"] = 0.0
    assert [m.split(":")[0] for m in mismatches(manifest, expected)] == ["guidance"]
    manifest.status = "failed"
    assert "status" in [m.split(":")[0] for m in mismatches(manifest, expected)]


def test_corrupt_insightface_pack_is_reported_before_any_storyboard_and_the_report_is_written(tmp_path, caplog,
                                                                                             tiny_arcface_onnx):
    """A pack whose detector file is truncated: evaluate.py says so before it touches a storyboard, skips that
    backend, and finishes its report with the other backends."""
    from aldar_lit.evaluation.run import evaluate

    pack = tmp_path / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    arcface = tiny_arcface_onnx.read_bytes()
    (pack / "w600k_r50.onnx").write_bytes(arcface)
    (pack / "det_10g.onnx").write_bytes(arcface[: len(arcface) // 2])
    cfg = eval_config(tmp_path, "modes=[baseline]", "lora.path=null", "identity.backends=[insightface,dlib]",
                      f"identity.insightface_root={tmp_path / 'insightface'}", "stats.num_resamples=200",
                      f"frames_from=[{tmp_path / 'infer_run'}]")
    manifest, _ = matching_manifest(cfg, "baseline", 0)
    (tmp_path / "infer_run" / "frames").mkdir(parents=True)
    for frame, image in zip(manifest.frames, [astronaut(), cat()]):
        image.save(tmp_path / "infer_run" / frame["file"])
    write_storyboard_manifest(tmp_path / "infer_run", manifest)
    caplog.set_level("INFO", logger="aldar_lit")
    evaluate(cfg, tmp_path / "out")
    messages = [r.getMessage() for r in caplog.records]
    skipped = next(i for i, m in enumerate(messages) if "face identity backend insightface skipped" in m)
    first_storyboard = next(i for i, m in enumerate(messages) if m.startswith(("reusing", "generating")))
    assert skipped < first_storyboard
    assert "det_10g.onnx" in messages[skipped] and "INVALID_PROTOBUF" in messages[skipped]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "identity backend `insightface` did not run" in report and "det_10g.onnx" in report
    assert "| face_detected/dlib | 0.5000 | 2 / 2 | 1 |" in report  # the astronaut has a face, the cat none
