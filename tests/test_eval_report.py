"""Report files from measured storyboards of real photographs (no generation): tables, comparisons, plots."""

from __future__ import annotations

import csv
import json
import math

import pytest
from PIL import Image

from aldar_lit.evaluation.generation import StoryboardRun
from aldar_lit.evaluation.metrics import Scorers, measure
from aldar_lit.evaluation.run import write_report
from fixtures_eval import astronaut, cat, dlib_embedder, grace_hopper  # noqa: F401
from test_eval_bad_input import eval_config, write_manifest


def board(tmp_path, mode: str, images: list[Image.Image]) -> StoryboardRun:
    run_dir = tmp_path / mode
    write_manifest(run_dir, mode, ["a", "b", "c"], [1, 2, 3], images)
    return StoryboardRun(mode, "story", 0, run_dir, json.loads((run_dir / "manifest.json").read_text()), True)


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
    assert "| face_detected/dlib | simple − baseline | 0.6667" in report
    assert "Not comparable (no unit has a value in both modes" in report and "id_to_frame1/dlib" in report
    assert "fewer than 10 pairs" in report and "identity/dlib: dlib" in report
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} >= {"clip_t", "face_detected/dlib", "story_consistency/dlib", "seconds"}
    assert len([r for r in rows if r["metric"] == "clip_t"]) == 6
