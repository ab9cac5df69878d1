"""Report files from measured storyboards of real photographs (no generation): tables, comparisons, plots."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from aldar_lit.artifacts import read_storyboard_manifest
from aldar_lit.evaluation.generation import StoryboardRun
from aldar_lit.evaluation.metrics import Measurements, Scorers, measure, storyboard_means
from aldar_lit.evaluation.run import write_report
from fixtures_eval import astronaut, cat, dlib_embedder, grace_hopper  # noqa: F401
from test_eval_bad_input import eval_config, write_manifest


def board(tmp_path, mode: str, images: list[Image.Image]) -> StoryboardRun:
    run_dir = tmp_path / mode
    write_manifest(run_dir, mode, ["a", "b", "c"], [1, 2, 3], images)
    return StoryboardRun(mode, "story", 0, run_dir, read_storyboard_manifest(run_dir), True)


def test_report_from_faces_and_non_faces(tmp_path, dlib_embedder):
    from aldar_lit.quality.clip_scorer import ClipScorer

    cfg = eval_config(tmp_path, "modes=[baseline,simple]", "identity.backends=[dlib]", "stats.num_resamples=500")
    runs = [board(tmp_path, "baseline", [cat(), cat(), grace_hopper()]),
            board(tmp_path, "simple", [astronaut(), astronaut().transpose(0), astronaut().resize((384, 384))])]
    scorers = Scorers(ClipScorer("aldar-tiny-clip", None), None, {"dlib": dlib_embedder})
    out = tmp_path / "report"
    out.mkdir()
    result = write_report(cfg, out, runs, measure(runs, scorers, [astronaut()]), scorers, ["baseline", "simple"])
    for name in ("results.csv", "summary.csv", "comparisons.csv", "report.md", "metric_bars.png",
                 "identity_heatmap_dlib.png", "samples_baseline.png", "samples_simple.png"):
        assert (out / name).stat().st_size > 0, name
    summary = {(r["mode"], r["metric"]): r for r in result["summary"]}
    assert summary[("baseline", "face_detected/dlib")]["mean"] == pytest.approx(1 / 3)
    assert summary[("simple", "face_detected/dlib")]["mean"] == 1.0
    # Grace Hopper vs the astronaut training image: one different-person value; the astronaut frames: same person
    assert summary[("baseline", "id_to_train/dlib")]["n"] == 1
    assert summary[("simple", "id_to_train/dlib")]["mean"] > summary[("baseline", "id_to_train/dlib")]["mean"] + 0.05
    comparisons = {(c["metric"], c["treatment"]): c for c in result["comparisons"]}
    detection = comparisons[("face_detected/dlib", "simple")]
    assert detection["n_pairs"] == 3 and detection["mean_diff"] == pytest.approx(2 / 3)
    frame1 = comparisons[("id_to_frame1/dlib", "simple")]
    assert frame1["n_pairs"] == 0 and math.isnan(frame1["mean_diff"])
    report = (out / "report.md").read_text()
    assert "| face_detected/dlib | simple − baseline | 0.6667 | – | – | 1 | 3 / 3 | not claimed |" in report
    assert "Not comparable (no unit has a value in both modes" in report and "id_to_frame1/dlib" in report
    assert "identity/dlib: dlib" in report and "- reference images: –" in report and "None" not in report
    assert ("- Identity rates (`dlib`; a frame without a face counts as not verified): face detected: baseline 0.33, "
            "simple 1.00; same person as frame 1: baseline 0.00, simple 1.00; same person as the training images: "
            "baseline 0.00, simple 1.00.") in report
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} >= {"clip_t", "face_detected/dlib", "story_consistency/dlib", "seconds"}
    assert len([r for r in rows if r["metric"] == "clip_t"]) == 6


def synthetic_clip_t(board_differences: list[float], seed: int = 0) -> list[dict]:
    """clip_t rows of 25 frames per storyboard in baseline and simple, simple - baseline = the storyboard's
    difference plus small frame noise; a storyboard is (story, seed)."""
    rng = np.random.default_rng(seed)
    rows = []
    for board, difference in enumerate(board_differences):
        level = rng.normal(0.3, 0.02)
        for frame in range(1, 26):
            base = level + rng.normal(0, 0.01)
            for mode, value in (("baseline", base), ("simple", base + difference + rng.normal(0, 0.002))):
                rows.append({"mode": mode, "story": "suite", "seed": board, "frame": frame, "prompt": f"p{frame}",
                             "metric": "clip_t", "value": value})
    return rows


def report_of(tmp_path, rows, *overrides: str) -> tuple[str, list[dict]]:
    from aldar_lit.quality.clip_scorer import ClipScorer

    cfg = eval_config(tmp_path, "modes=[baseline,simple]", "identity.backends=[dlib]", "stats.num_resamples=2000",
                      *overrides)
    out = tmp_path / "report"
    out.mkdir(exist_ok=True)
    scorers = Scorers(ClipScorer("aldar-tiny-clip", None), None, {})
    result = write_report(cfg, out, [], Measurements(rows, {}), scorers, ["baseline", "simple"])
    return (out / "report.md").read_text(), result["comparisons"]


REAL_WEIGHTS = ("model.random_init=null", "scorer.clip.pretrained=openai", "scorer.dino=null")


def test_significance_follows_the_storyboards_not_the_frames(tmp_path):
    """Storyboard differences that straddle 0 (mean 0.01, spread 0.04) over 250 tightly clustered frames: a
    frame-level analysis would call them significant (z ~ 4); resampling the 10 storyboards does not."""
    straddling = [0.05, -0.03, 0.06, -0.02, 0.04, -0.04, 0.05, -0.01, 0.03, -0.03]
    rows = synthetic_clip_t(straddling)
    # the plot's per-storyboard points are the storyboard means the statistics resample
    points = storyboard_means(rows, "simple", "clip_t") - storyboard_means(rows, "baseline", "clip_t")
    assert points == pytest.approx(straddling, abs=0.002)
    report, comparisons = report_of(tmp_path, rows, *REAL_WEIGHTS)
    (clip_t,) = comparisons
    assert clip_t["storyboards"] == 10 and clip_t["n_pairs"] == 250
    assert clip_t["mean_diff"] == pytest.approx(0.01, abs=1e-3)
    assert clip_t["ci_low"] < 0 < clip_t["ci_high"] and clip_t["p_value"] > 0.2 and clip_t["significant"] is False
    assert "Significant under the clustered analysis: none." in report and "Test mode" not in report
    assert "exact sign-flip (all 1024 patterns)" in report
    assert clip_t["mde"] > 0.02  # the suite cannot see a 0.01 difference with this spread between storyboards

    consistent = [0.02 + 0.002 * i for i in range(10)]
    report, comparisons = report_of(tmp_path, synthetic_clip_t(consistent), *REAL_WEIGHTS)
    assert comparisons[0]["significant"] is True and comparisons[0]["p_value"] == pytest.approx(2 / 1024)
    assert "Significant under the clustered analysis: `clip_t` simple − baseline (0.0290, p = 0.002)" in report
    assert "| **yes** |" in report


def test_random_weights_make_no_claim_and_say_so_first(tmp_path):
    consistent = [0.02 + 0.002 * i for i in range(10)]
    report, comparisons = report_of(tmp_path, synthetic_clip_t(consistent))
    warning = report.index("**Test mode: random weights (model tiny (random_init=tiny); CLIP scorer aldar-tiny-clip")
    assert warning < report.index("## Models used") < report.index("## Paired comparisons")
    assert comparisons[0]["significant"] is None and comparisons[0]["p_value"] == pytest.approx(2 / 1024)
    assert "**yes**" not in report and "| not claimed |" in report and "Significant under" not in report
    with (tmp_path / "report" / "comparisons.csv").open() as f:
        assert [row["significant"] for row in csv.DictReader(f)] == [""]


def test_story_measures_go_through_the_clustered_statistics_into_the_report(tmp_path):
    """Two storyboards per mode: ref_guided repeats frame 1's face (a copy), baseline changes person; the story
    measures get clustered intervals, paired sign-flip tests and their lines in 'How to read this'."""
    from aldar_lit.evaluation.story_metrics import StoryScorers
    from aldar_lit.evaluation.vlm_judge import judge
    from aldar_lit.quality.clip_scorer import ClipScorer
    from aldar_lit.quality.faces import HaarFaceDetector

    cfg = eval_config(tmp_path, "modes=[baseline,ref_guided]", "identity.backends=[]", "stats.num_resamples=500")
    photo = astronaut()
    (face,) = HaarFaceDetector().detect(photo)
    runs = []
    for seed, size in ((0, 512), (1, 480)):
        frame1 = photo.resize((size, size))
        for mode, later in (("baseline", [grace_hopper(), cat()]), ("ref_guided", [frame1, frame1.rotate(5)])):
            run_dir = tmp_path / mode / f"seed{seed}"
            write_manifest(run_dir, mode, ["a", "b", "c"], [1, 2, 3], [frame1, *later])
            manifest = read_storyboard_manifest(run_dir)
            manifest.identity_reference = {"source": "frame 1", "face": HaarFaceDetector().detect(frame1)[0]
                                              .to_dict(), "fallback": None}
            runs.append(StoryboardRun(mode, "story", seed, run_dir, manifest, True))
    clip = ClipScorer("aldar-tiny-clip", None)
    story = StoryScorers(HaarFaceDetector(), clip, "tiny", cfg.story_metrics, cfg.adapters.ip_adapter.face_margin)
    scorers = Scorers(clip, None, {}, story=story)
    out = tmp_path / "report"
    out.mkdir()
    _, judge_report = judge([], cfg.vlm_judge, None)
    result = write_report(cfg, out, runs, measure(runs, scorers, [photo.transpose(0), photo.resize((400, 400))]),
                          scorers, ["baseline", "ref_guided"], judge_report)
    summary = {(r["mode"], r["metric"]): r for r in result["summary"]}
    for metric in ("copy_paste", "char_cross/clip", "char_self/clip", "style_consistency", "character_count_match",
                   "crop_from_face"):
        entry = summary[("ref_guided", metric)]
        assert entry["storyboards"] == 2 and math.isfinite(entry["ci_low"]), metric
    assert summary[("ref_guided", "character_count_match")]["mean"] == 1.0
    assert summary[("baseline", "character_count_match")]["mean"] == pytest.approx(2 / 3)  # the cat has no face
    assert summary[("ref_guided", "copy_paste")]["mean"] > 0.5
    comparisons = {(c["metric"], c["treatment"]): c for c in result["comparisons"]}
    self_sim = comparisons[("char_self/clip", "ref_guided")]
    assert self_sim["storyboards"] == 2 and self_sim["p_method"] == "exact sign-flip (all 4 patterns)"
    assert self_sim["mean_diff"] > 0  # one person repeated is more self-similar than three different images
    report = (out / "report.md").read_text()
    assert "`copy_paste` is in [0, 1]" in report and "`char_cross/<clip|dino>`" in report
    assert "- Story measures per mode: character crop from a face: baseline 0.67, ref_guided 1.00;" in report
    assert "VLM judge (gpt-4o) skipped: OPENAI_API_KEY is not set" in report
    assert "character crop: largest haar face box" in report
