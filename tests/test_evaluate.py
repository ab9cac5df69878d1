"""evaluate.py end to end on the tiny model (3 modes x 2 prompts x 2 seeds, 64 px, 2 steps) and manifest reuse.

Slow (~100-180 s on 2 shared cores): every storyboard runs the real pipelines, QA and scorers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fixtures_eval import tiny_arcface_onnx  # noqa: F401
from fixtures_storyboard import tiny_lora_dir  # noqa: F401

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["aldar_kose_man smiling at the camera", "aldar_kose_man riding a horse"]


def compose_evaluate(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from aldar_lit.config.evaluate import register_evaluate_configs

    register_evaluate_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def tiny_overrides(out_dir: Path, lora: Path, references: Path, onnx: Path, modes="[baseline,simple,ref_guided]"):
    return ["model=tiny", "adapters=tiny", "qa=tiny", "scorer=tiny", f"lora.path={lora}", f"modes={modes}",
            "generation.width=64", "generation.height=64", "generation.steps=2", "generation.device=cpu",
            f"suite.prompts={json.dumps(PROMPTS)}", "suite.seeds=[0,1]", "suite.style=''",
            f"reference_images={references}", "identity.backends=[insightface,dlib,arcface_onnx]",
            f"identity.insightface_root={out_dir / 'no_insightface'}", f"identity.arcface_onnx_path={onnx}",
            "stats.num_resamples=200", f"paths.output_dir={out_dir}"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, tiny_model_dir, demo_data_dir, tiny_lora_dir, tiny_arcface_onnx):
    from aldar_lit.evaluation.run import run

    out_dir = tmp_path_factory.mktemp("evaluate")
    overrides = tiny_overrides(out_dir, tiny_lora_dir, demo_data_dir, tiny_arcface_onnx)
    result = run(compose_evaluate(overrides))
    return out_dir, overrides, result


def test_evaluate_writes_report_tables_and_plots(evaluation):
    out_dir, _, result = evaluation
    for name in ("report.md", "summary.csv", "results.csv", "comparisons.csv", "metric_bars.png",
                 "identity_heatmap_dlib.png", "identity_heatmap_arcface_onnx.png", "samples_baseline.png",
                 "samples_simple.png", "samples_ref_guided.png"):
        assert (out_dir / name).is_file() and (out_dir / name).stat().st_size > 0, name
    results = read_csv(out_dir / "results.csv")
    # 3 modes x 2 seeds x 2 frames, every per-image metric once per image
    clip_t = [r for r in results if r["metric"] == "clip_t"]
    assert len(clip_t) == 12 and {r["mode"] for r in clip_t} == {"baseline", "simple", "ref_guided"}
    detected = [r for r in results if r["metric"] == "face_detected/dlib"]
    assert len(detected) == 12 and all(r["value"] in ("0.0", "1.0") for r in detected)
    summary = {(r["mode"], r["metric"]): r for r in read_csv(out_dir / "summary.csv")}
    for mode in ("baseline", "simple", "ref_guided"):
        assert summary[(mode, "clip_t")]["n"] == "4" and summary[(mode, "clip_t")]["n_total"] == "4"
        assert summary[(mode, "dino")]["n_total"] == "4" and summary[(mode, "clip_i")]["n_total"] == "4"
        # no face on tiny-model noise: the rate is reported (0 of 4), the identity mean has n=0, not a fake value
        assert summary[(mode, "face_detected/dlib")]["n"] == "4"
        identity = summary[(mode, "id_to_frame1/dlib")]
        assert identity["n_total"] == "4" and int(identity["n"]) <= 4
    report = (out_dir / "report.md").read_text()
    assert "## Paired comparisons" in report and "simple − baseline" in report and "ref_guided − simple" in report
    assert "identity backend `insightface` did not run" in report and "buffalo_l" in report
    assert "dlib 20" in report and "aldar-tiny-clip" in report
    # the story measures: per frame, per storyboard, and the judge's absence recorded (no OPENAI_API_KEY in tests)
    for metric, per_frame in (("crop_from_face", 12), ("character_count_match", 12), ("char_cross/clip", 12),
                              ("char_cross/dino", 12), ("char_self/clip", 6), ("style_consistency", 6)):
        assert len([r for r in results if r["metric"] == metric]) == per_frame, metric
    assert summary[("ref_guided", "style_consistency")]["storyboards"] == "2"
    assert "VLM judge (gpt-4o) skipped: OPENAI_API_KEY is not set" in report
    assert json.loads((out_dir / "vlm_judge.json").read_text())["skipped"].startswith("OPENAI_API_KEY is not set")


def test_ref_guided_frame_one_equals_simple_and_ref_guidance_changes_later_frames(evaluation):
    out_dir, _, _ = evaluation
    rows = {(r["mode"], r["seed"], r["frame"]): float(r["value"])
            for r in read_csv(out_dir / "results.csv") if r["metric"] == "clip_t"}
    assert rows[("ref_guided", "0", "1")] == pytest.approx(rows[("simple", "0", "1")], abs=1e-6)
    assert rows[("ref_guided", "0", "2")] != pytest.approx(rows[("simple", "0", "2")], abs=1e-6)
    assert rows[("simple", "0", "1")] != pytest.approx(rows[("baseline", "0", "1")], abs=1e-6)


def test_metrics_match_a_direct_computation(evaluation, demo_data_dir):
    """CLIP-T / CLIP-I / DINO of one frame recomputed here from the raw models, without the scorer classes."""
    import open_clip
    import timm
    import torch
    from PIL import Image

    from aldar_lit.quality.clip_scorer import register_packaged_clip_configs

    out_dir, _, _ = evaluation
    results = read_csv(out_dir / "results.csv")
    value = {r["metric"]: float(r["value"]) for r in results if (r["mode"], r["seed"], r["frame"]) == ("simple", "1", "2")}
    frame = Image.open(out_dir / "generations" / "simple" / "prompt_suite" / "seed1" / "frames" / "02.png").convert("RGB")
    refs = [Image.open(p).convert("RGB") for p in sorted(demo_data_dir.rglob("*.png"))]
    register_packaged_clip_configs()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("aldar-tiny-clip", pretrained=None)
    model.eval()
    with torch.no_grad():
        img = model.encode_image(preprocess(frame)[None])
        img = img / img.norm(dim=-1, keepdim=True)
        txt = model.encode_text(open_clip.get_tokenizer("aldar-tiny-clip")([PROMPTS[1]]))
        txt = txt / txt.norm(dim=-1, keepdim=True)
        ref = model.encode_image(torch.stack([preprocess(r) for r in refs]))
        ref = ref / ref.norm(dim=-1, keepdim=True)
    assert value["clip_t"] == pytest.approx(float(img[0] @ txt[0]), abs=1e-5)
    assert value["clip_i"] == pytest.approx(float((ref @ img[0]).mean()), abs=1e-5)
    torch.manual_seed(0)
    dino = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0, img_size=64).eval()
    transform = timm.data.create_transform(**{**timm.data.resolve_model_data_config(dino), "input_size": (3, 64, 64)})
    with torch.no_grad():
        feats = torch.nn.functional.normalize(dino(torch.stack([transform(x) for x in [frame, *refs]])), dim=-1)
    assert value["dino"] == pytest.approx(float((feats[1:] @ feats[0]).mean()), abs=1e-5)


def test_rerun_reuses_frames_and_frames_from_reuses_infer_runs(evaluation, tmp_path):
    from aldar_lit.evaluation.run import run

    out_dir, overrides, _ = evaluation
    stamps = {p: p.stat().st_mtime_ns for p in (out_dir / "generations").rglob("frames/*.png")}
    assert len(stamps) == 12
    # an infer.py-style run dir elsewhere, matched by its manifest
    copied = tmp_path / "infer_run"
    shutil.copytree(out_dir / "generations" / "baseline" / "prompt_suite" / "seed0", copied)
    second = tmp_path / "second"
    run(compose_evaluate([o if not o.startswith("paths.output_dir") else f"paths.output_dir={second}"
                          for o in overrides if not o.startswith("modes")]
                         + ["modes=[baseline]", "suite.seeds=[0]", f"frames_from=[{copied}]"]))
    assert not (second / "generations").exists() or not any((second / "generations").rglob("*.png"))
    assert "reused storyboards: 1" in (second / "report.md").read_text()
    run(compose_evaluate(overrides))  # all three modes, ref_guided included, match their manifests
    assert {p: p.stat().st_mtime_ns for p in (out_dir / "generations").rglob("frames/*.png")} == stamps
    assert "reused storyboards: 6" in (out_dir / "report.md").read_text()


def test_sweep_dir_gives_rank_and_steps_table(tmp_path, tiny_model_dir, demo_data_dir):
    """Two finished 'training runs' (LoRAs of rank 4 and 8 with their summary.json): each evaluated in mode simple."""
    from aldar_lit.evaluation.run import run
    from fixtures_storyboard import export_random_lora

    sweep = tmp_path / "sweep"
    for job, (rank, steps) in enumerate([(4, 100), (8, 200)]):
        run_dir = sweep / str(job)
        export_random_lora(tiny_model_dir, run_dir / "lora", seed=job, rank=rank)
        (run_dir / "summary.json").write_text(json.dumps({
            "global_step": steps, "train_seconds": 10.0 * (job + 1), "peak_memory_bytes": 10**9 * (job + 1),
            "lora": {"rank": rank}, "adapter_bytes": {"diffusers": 1000 * rank}, "trainable_params": 100 * rank}))
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(f"- lora.rank={rank}\n")
    out_dir = tmp_path / "out"
    overrides = ["model=tiny", "adapters=tiny", "qa=tiny", "scorer=tiny", f"sweep_dir={sweep}", "modes=[simple]",
                 "generation.width=64", "generation.height=64", "generation.steps=2", "generation.device=cpu",
                 f"suite.prompts={json.dumps(PROMPTS[:1])}", "suite.seeds=[0]", f"reference_images={demo_data_dir}",
                 "identity.backends=[dlib]", "stats.num_resamples=200", f"paths.output_dir={out_dir}"]
    result = run(compose_evaluate(overrides))
    rows = result["rows"]
    assert [r["lora_rank"] for r in rows] == [4, 8] and [r["global_step"] for r in rows] == [100, 200]
    assert all(isinstance(r["clip_i"], float) and -1 <= r["clip_i"] <= 1 for r in rows)
    assert all(isinstance(r["score"], float) for r in rows)  # val/score's scorer, beside each run's best_score
    assert rows[0]["clip_t"] != rows[1]["clip_t"]  # different adapters, different frames
    table = (out_dir / "sweep_eval.md").read_text()
    assert "| 0 | lora.rank=4 | 4 | 100 |" in table and "| 1 | lora.rank=8 | 8 | 200 |" in table
    assert "| best_score |" in table and "| score |" in table
    assert (out_dir / "sweep_eval.png").stat().st_size > 0 and (out_dir / "sweep_eval.csv").is_file()
