"""What a reviewer's W&B dashboard receives, read back from the offline runs: train.py then evaluate.py on the tiny
model, each logging offline as a user runs them (the records are what `wandb sync` uploads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from wandb_records import offline_run

TRAIN = ["experiment=quickstart", "logger=default", "data.resolution=32", "lora.rank=2", "lora.alpha=4",
         "data.demo.num_images=8", "data.demo.size=64", "trainer.max_steps=4", "trainer.log_every_n_steps=1",
         "validation.every_n_steps=2", "validation.num_inference_steps=2", "validation.seeds=[0]", "validation.top_k=1"]


def run_tool(script: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, script, f"hydra.run.dir={run_dir}", *overrides], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def history(records) -> list[dict[str, object]]:
    """Each logged row, key -> value; media (images, tables) as their W&B `_type`."""
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {i.key or i.nested_key[0]: json.loads(i.value_json) for i in r.history.item
                   if i.key or len(i.nested_key) == 1 or i.nested_key[1:] == ["_type"]}
            rows.append(row)
    return rows


def history_keys(records) -> set[str]:
    return {key for row in history(records) for key in row}


def items(records, kind: str) -> dict[str, object]:
    """The config or summary of a run (the run record's, then its updates), key -> decoded value."""
    updates = [getattr(r.run, kind) if r.WhichOneof("record_type") == "run" else getattr(r, kind) for r in records
               if r.WhichOneof("record_type") in ("run", kind)]
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for u in updates for item in u.update}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("wandb_train")
    run_tool("train.py", run_dir, *TRAIN)
    return run_dir


def test_training_run_logs_curves_per_step_images_table_and_the_adapter_artifact(trained):
    summary = json.loads((trained / "summary.json").read_text())
    files, records = offline_run(trained / "wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "aldar_lit" and run.run_id == summary["wandb"]["run_id"]
    assert run.display_name.startswith("train experiment=quickstart logger=default")  # readable, from the overrides
    assert summary["wandb"]["artifact"] == f"lora-{run.run_id}"

    keys = history_keys(records)
    assert {"train/loss", "val/clip_t", "val/clip_i", "val/dino", "val/score", "trainer/global_step"} <= keys
    assert {"lr-AdamW/unet", "lr-AdamW/text_encoder", "lr-AdamW/text_encoder_2"} <= keys  # one per parameter group
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "*" and m.step_metric == "trainer/global_step" for m in metrics)  # the default x axis
    rows = history(records)
    assert [row["trainer/global_step"] for row in rows if "val/score" in row] == [2, 4]  # score against step
    assert [row["val/samples"] for row in rows if "val/samples" in row] == ["images/separated"] * 2
    assert [row["val/table"] for row in rows if "val/table" in row] == ["table-file"] * 2  # the table across steps
    assert list(files.glob("media/images/val/samples_*.png")) and list(files.glob("media/table/val/*.table.json"))

    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "lora"]
    assert [artifact.name for artifact in artifacts] == [f"lora-{run.run_id}"]
    artifact = artifacts[0]
    card = json.loads((trained / "lora" / "adapter_card.json").read_text())
    metadata = json.loads(artifact.metadata)
    assert {k: metadata[k] for k in card} == card  # the artifact's metadata is the adapter card
    assert metadata["best_step"] == summary["best_step"] and metadata["best_score"] == summary["best_score"]
    assert {entry.path for entry in artifact.manifest.contents} == {p.name for p in (trained / "lora").iterdir()}


@pytest.mark.slow
def test_evaluation_run_names_the_training_artifact_and_logs_its_tables_and_grids(trained, tmp_path, demo_data_dir):
    eval_dir = tmp_path / "evaluate"
    evaluated = run_tool("evaluate.py", eval_dir, "model=tiny", "adapters=tiny", "qa=tiny", "scorer=tiny",
             f"lora.path={trained / 'lora'}", "modes=[baseline,simple]", "generation.width=32", "generation.height=32",
             "generation.steps=2", "generation.device=cpu", "suite.prompts=[aldar_kose_man smiling,aldar_kose_man]",
             "suite.seeds=[0,1]", "suite.style=''", f"reference_images={demo_data_dir}", "identity.backends=[]",
             "vlm_judge.enabled=false", "stats.num_resamples=100", "wandb.enabled=true")
    artifact = json.loads((trained / "summary.json").read_text())["wandb"]["artifact"]
    files, records = offline_run(eval_dir / "wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.job_type == "evaluate" and run.display_name.startswith("evaluate model=tiny")
    assert items(records, "config")["lora_artifact"] == artifact  # the training run's adapter
    assert items(records, "summary")["lora_artifact"] == artifact
    assert {"summary", "comparisons", "plots/samples_baseline", "plots/samples_simple", "plots/metric_bars"} <= (
        history_keys(records))
    comparisons = json.loads(next(files.glob("media/table/comparisons_*.table.json")).read_text())
    assert {"ci_low", "ci_high"} <= set(comparisons["columns"]) and comparisons["data"]  # per-mode, with intervals
    assert len(list(files.glob("media/images/plots/samples_*.png"))) == 2
    [sync_dir] = (eval_dir / "wandb").glob("offline-run-*")  # W&B's own hint is off the console: the closing one
    assert f"  W&B run (offline): {sync_dir}; upload it with: wandb sync {sync_dir}" in evaluated.stdout.splitlines()


def test_run_names_are_the_tool_and_its_overrides_with_paths_shortened():
    from aldar_lit.tracking import run_name

    assert run_name("train", ["experiment=lr_search", "data.root=/data/renders/aldar", "optim.unet_lr=0.0001"]) == (
        "train experiment=lr_search data.root=renders/aldar optim.unet_lr=0.0001")
    assert run_name("evaluate", []) == "evaluate"


def test_each_job_is_named_unless_the_user_named_the_run_and_a_sweep_is_one_group(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from aldar_lit.tracking import WandbRunName
    from aldar_lit.training.sweep_summary import SweepSummaryCallback

    monkeypatch.delenv("WANDB_NAME", raising=False)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    sweep = OmegaConf.create({"hydra": {"job": {"name": "train"}, "sweep": {"dir": str(tmp_path / "lr_search")}}})
    SweepSummaryCallback().on_multirun_start(sweep)
    assert os.environ["WANDB_RUN_GROUP"] == "train-lr_search" and (tmp_path / "lr_search").is_dir()

    def job(*overrides: str):
        return OmegaConf.create({"hydra": {"job": {"name": "train"}, "overrides": {"task": list(overrides)}}})

    naming = WandbRunName()
    naming.on_job_start(job("lora.rank=8"))
    naming.on_job_start(job("lora.rank=16"))  # the next job of a sweep, in the same process
    assert os.environ["WANDB_NAME"] == "train lora.rank=16"
    monkeypatch.setenv("WANDB_NAME", "my run")
    WandbRunName().on_job_start(job("lora.rank=8"))
    assert os.environ["WANDB_NAME"] == "my run"
