"""The typed files passed between stages: one writer, one reader, a version, errors that name the file."""

from __future__ import annotations

import json
import logging

import pytest

from aldar_lit.artifacts import (RUN_SUMMARY, STORYBOARD_MANIFEST, ArtifactError, RunSummary, StoryboardManifest,
                                 read_run_summary, write_run_summary, write_storyboard_manifest)


def test_run_summary_round_trip(tmp_path) -> None:
    summary = RunSummary(status="interrupted", global_step=3, lora={"rank": 4}, adapter_bytes={"diffusers": 10},
                         history=[{"step": 2, "score": 0.5}], interrupted_by="SIGTERM")
    write_run_summary(tmp_path, summary)
    assert json.loads((tmp_path / RUN_SUMMARY).read_text())["version"] == 1
    assert read_run_summary(tmp_path) == summary


def test_a_summary_from_before_versions_is_read_with_a_warning(tmp_path, caplog) -> None:
    (tmp_path / RUN_SUMMARY).write_text(json.dumps({"status": "completed", "global_step": 20, "best_score": 0.7}))
    with caplog.at_level(logging.WARNING, logger="aldar_lit.artifacts"):
        summary = read_run_summary(tmp_path)
    assert (summary.global_step, summary.best_score, summary.version) == (20, 0.7, 1)
    assert f"{tmp_path / RUN_SUMMARY}: a run summary without a version" in caplog.text


@pytest.mark.parametrize("payload, problem", [
    ({"version": 2, "status": "completed"}, "run summary version 2; this aldar_lit reads version 1"),
    ({"version": 1, "status": "completed", "steps": 3}, "unknown fields ['steps']"),
    (["not", "an", "object"], "not a run summary"),
])
def test_a_summary_of_another_version_or_shape_is_refused_naming_the_file(tmp_path, payload, problem) -> None:
    (tmp_path / RUN_SUMMARY).write_text(json.dumps(payload))
    with pytest.raises(ArtifactError, match=f"^{tmp_path / RUN_SUMMARY}: .*") as refused:
        read_run_summary(tmp_path)
    assert problem in str(refused.value)


def test_a_missing_summary_names_the_file(tmp_path) -> None:
    with pytest.raises(ArtifactError, match=f"{tmp_path / RUN_SUMMARY}: cannot read the run summary"):
        read_run_summary(tmp_path)


def test_a_storyboard_manifest_of_another_version_is_refused_by_the_evaluation_naming_the_file(tmp_path) -> None:
    from aldar_lit.evaluation.generation import ManifestError, read_manifest

    write_storyboard_manifest(tmp_path, StoryboardManifest(status="complete", mode="simple"))
    assert read_manifest(tmp_path) == StoryboardManifest(status="complete", mode="simple")
    manifest = json.loads((tmp_path / STORYBOARD_MANIFEST).read_text())
    (tmp_path / STORYBOARD_MANIFEST).write_text(json.dumps({**manifest, "version": 2}))
    with pytest.raises(ManifestError, match=f"{tmp_path / STORYBOARD_MANIFEST}: storyboard manifest version 2"):
        read_manifest(tmp_path)
