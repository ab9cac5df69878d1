"""train.py end to end, as a user runs it: the run directory contract, resume, clear config errors."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from aldar_lit.config import ConfigError, LoraConfig, TrainConfig
from aldar_lit.training.run import check_resume_checkpoint
from conftest import REPO_ROOT

TINY = ["experiment=quickstart", "callbacks=none", "logger=csv", "data.resolution=32", "lora.rank=2", "lora.alpha=4"]
SMALL_DEMO = ["data.demo.num_images=8", "data.demo.size=64"]


def train_command(run_dir: Path, *overrides: str, demo: bool = True, launcher: tuple[str, ...] = ()) -> list[str]:
    """`python [launcher] train.py ...` on the tiny recipe, e.g. launcher=("-m", "torch.distributed.run", ...)."""
    return [sys.executable, *launcher, "train.py", f"hydra.run.dir={run_dir}", *TINY, *(SMALL_DEMO if demo else []),
            *overrides]


def train(run_dir: Path, *overrides: str, check: bool = True, demo: bool = True,
          launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    result = subprocess.run(train_command(run_dir, *overrides, demo=demo, launcher=launcher),
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("full")
    train(run_dir, "trainer.max_steps=8", "checkpoint.every_n_train_steps=4")
    return run_dir


def test_run_directory_contract(full_run: Path, cache_dir: Path) -> None:
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["global_step"] == 8
    assert summary["base_model"] == str(cache_dir / "models" / "tiny-sdxl-seed0")
    assert summary["lora"] == {"rank": 2, "alpha": 4.0, "unet_targets": ["to_q", "to_k", "to_v", "to_out.0"],
                               "text_encoder_targets": ["q_proj", "k_proj", "v_proj", "out_proj"]}
    assert summary["train_seconds"] > 0 and summary["peak_memory_bytes"] > 0
    assert summary["checkpoint_bytes"] == (full_run / "checkpoints" / "last.ckpt").stat().st_size
    assert {p.name for p in (full_run / "checkpoints").iterdir()} == {"step-000004.ckpt", "step-000008.ckpt", "last.ckpt"}
    assert (full_run / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (full_run / "lora" / "lora_kohya.safetensors").is_file()
    header = (full_run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(header) == {"epoch", "step", "train/loss", "lr-AdamW/unet", "lr-AdamW/text_encoder",
                           "lr-AdamW/text_encoder_2"}  # the learning rate of each parameter group


def test_checkpoint_holds_only_lora_and_training_state(full_run: Path) -> None:
    summary = json.loads((full_run / "summary.json").read_text())
    checkpoint = torch.load(full_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    assert sum(v.numel() for v in state.values()) == summary["trainable_params"]
    assert checkpoint["optimizer_states"] and checkpoint["global_step"] == 8


@pytest.mark.slow  # the default suite resumes mid-epoch (test_resume_exact.py) and as the README types it
def test_resume_continues_the_step_count_and_reproduces_the_run(full_run: Path, tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    train(resumed, "trainer.max_steps=8", f"ckpt_path={full_run / 'checkpoints' / 'step-000004.ckpt'}")
    assert json.loads((resumed / "summary.json").read_text())["global_step"] == 8
    expected = load_file(full_run / "lora" / "pytorch_lora_weights.safetensors")
    actual = load_file(resumed / "lora" / "pytorch_lora_weights.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # inductor compiles C++ for the CPU: about a minute
def test_compiled_parts_train_like_eager_and_validate(full_run: Path, tmp_path: Path) -> None:
    """The UNet compiled block by block and both text encoders compiled train the same adapters as eager
    mode, and validation (no grad, eval mode: other compiled graphs) runs between the steps."""
    compiled = tmp_path / "compiled"
    train(compiled, "trainer.max_steps=8", "checkpoint.every_n_train_steps=4", "model.compile_unet=inductor",
          "model.compile_text_encoders=inductor", "callbacks=validation", "scorer=tiny", "validation.every_n_steps=4",
          "validation.num_inference_steps=2", "validation.seeds=[0]")
    assert json.loads((compiled / "summary.json").read_text())["best_step"] in (4, 8)
    assert len(list((compiled / "validation").rglob("*.png"))) >= 2
    eager = torch.load(full_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    state = torch.load(compiled / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state.keys() == eager.keys()
    for key in eager:
        torch.testing.assert_close(state[key], eager[key], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.rnak=8", "Key 'rnak' not in 'LoraConfig'"),
        ("optim.optimizer._target_=torch.optim.AdamX", "optim.optimizer._target_: cannot import 'torch.optim.AdamX'"),
    ],  # every other bad value is checked in-process in test_config.py
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path, override: str, message: str) -> None:
    result = train(tmp_path / "run", override, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_dir_is_named(tmp_path: Path) -> None:
    result = train(tmp_path / "run", "data=folder", f"data.root={tmp_path / 'nowhere'}", check=False, demo=False)
    assert result.returncode != 0
    assert f"data.root: directory {tmp_path / 'nowhere'} does not exist" in result.stderr


VALIDATED = ("callbacks=validation", "scorer=tiny", "validation.every_n_steps=2", "validation.num_inference_steps=2",
             "validation.seeds=[0]", "validation.top_k=2", "checkpoint.every_n_train_steps=2")


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory, cache_dir) -> Path:
    """8 steps scored every 2: the tiny random scorer ranks step 4 first, then step 6 (steps 2 and 8 lower)."""
    run_dir = tmp_path_factory.mktemp("validated")
    train(run_dir, "trainer.max_steps=8", *VALIDATED)
    return run_dir


def test_val_score_of_the_exported_step_is_the_evaluation_score_of_its_images(validated_run: Path, tmp_path: Path):
    """One scorer: the evaluation's code, given the exported step's saved validation images (their manifest gives
    each prompt) and the training folder as reference_images, gives train.py's val/score and its terms."""
    from aldar_lit.config.evaluate import to_eval_config
    from aldar_lit.evaluation.generation import StoryboardRun, read_manifest
    from aldar_lit.evaluation.metrics import build_scorers, load_reference_images, measure, summarise
    from test_evaluate import compose_evaluate

    summary = json.loads((validated_run / "summary.json").read_text())
    logged = next(entry for entry in summary["history"] if entry["step"] == summary["best_step"])
    run_config = OmegaConf.load(validated_run / ".hydra" / "config.yaml")
    cfg = to_eval_config(compose_evaluate(["model=tiny", "scorer=tiny", "qa=tiny", "modes=[baseline]",
                                           "suite.prompts=[unused]", f"reference_images={run_config.data.root}",
                                           f"max_reference_images={run_config.validation.max_reference_images}",
                                           f"paths.output_dir={tmp_path}"]))
    step_dir = validated_run / "validation" / f"step={summary['best_step']:06d}"
    images = StoryboardRun("simple", "validation", 0, step_dir, read_manifest(step_dir), reused=True)
    rows = measure([images], build_scorers(cfg, "cpu", {}, {}),
                   load_reference_images(cfg.reference_images, cfg.max_reference_images)).rows
    means = {entry["metric"]: entry["mean"] for entry in summarise(rows, ["simple"], 100, 0.95, 0)}
    assert len([r for r in rows if r["metric"] == "score"]) == len(run_config.data.validation_prompts)  # 1 seed
    assert abs(means["score"] - summary["best_score"]) < 1e-6
    for name in ("clip_t", "clip_i", "dino"):
        assert abs(means[name] - logged[name]) < 1e-6, name
    scores = [r["value"] for r in rows if r["metric"] == "score"]  # the noise the sweep summary weighs
    assert logged["score_se"] == pytest.approx(statistics.stdev(scores) / math.sqrt(len(scores)), rel=1e-4)
    assert [part.split()[0] for part in summary["random_weights"]] == ["model", "CLIP", "DINO"]  # the tiny recipe


def same_adapter(run_a: Path, run_b: Path) -> bool:
    a, b = (load_file(run / "lora" / "pytorch_lora_weights.safetensors") for run in (run_a, run_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("resume_from", "step"), [
    pytest.param("step-000006.ckpt", 6, marks=pytest.mark.slow),  # an evaluation follows
    ("last.ckpt", 8)])  # none does: the README's own resume command, and the case that used to crash
def test_resume_into_a_new_directory_exports_the_uninterrupted_runs_best(validated_run: Path, tmp_path: Path,
                                                                         resume_from: str, step: int) -> None:
    """The README's resume command (a new run directory) keeps the top-k by val/score of the run it resumes."""
    expected = json.loads((validated_run / "summary.json").read_text())
    assert expected["best_step"] < 6, "the test needs a best checkpoint from before the resume"
    previous_files = {p: p.stat().st_mtime_ns for p in (validated_run / "checkpoints").iterdir()}
    resumed = tmp_path / "resumed"
    train(resumed, "trainer.max_steps=8", *VALIDATED, f"ckpt_path={validated_run / 'checkpoints' / resume_from}")
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed_from"]["step"] == step
    assert (summary["best_step"], summary["best_score"]) == (expected["best_step"], expected["best_score"])
    assert Path(summary["best_checkpoint"]).parent == resumed / "checkpoints"  # the new directory holds its top-k
    assert same_adapter(resumed, validated_run)
    assert {p: p.stat().st_mtime_ns for p in (validated_run / "checkpoints").iterdir()} == previous_files


EVIL_MARKER = "evil-ran"


class RunsCode:
    """Unpickling it runs `touch <marker>`: what a planted checkpoint would do with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def plant_evil_checkpoint(path: Path) -> Path:
    """A checkpoint-shaped file (torch.save zip format) whose unpickling would create `path.parent/evil-ran`."""
    torch.save({"state_dict": {}, "global_step": 4, "payload": RunsCode(path.parent / EVIL_MARKER)}, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_before_loading_naming_it(tmp_path: Path) -> None:
    planted = plant_evil_checkpoint(tmp_path / "last.ckpt")
    result = train(tmp_path / "run", f"ckpt_path={planted}", check=False)
    assert result.returncode != 0
    assert f"ckpt_path: {planted}: refused to load: it holds Python objects other than tensors" in result.stderr
    assert not (tmp_path / EVIL_MARKER).exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


@pytest.mark.parametrize(("path", "message"), [
    ("http://127.0.0.1:9/last.ckpt", "ckpt_path: must be a local checkpoint file, got the URL 'http://127.0.0.1:9/"),
    ("nowhere/last.ckpt", "ckpt_path: no checkpoint file at nowhere/last.ckpt"),
])
def test_ckpt_path_must_be_a_local_file_at_config_time(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(ckpt_path=path)


def test_checkpoint_of_another_lora_shape_is_named_in_one_sentence(full_run: Path) -> None:
    checkpoint = full_run / "checkpoints" / "last.ckpt"
    config = TrainConfig(lora=LoraConfig(rank=4, alpha=4.0, unet_targets=["to_q", "to_v"]), ckpt_path=str(checkpoint))
    with pytest.raises(ConfigError) as refusal:
        check_resume_checkpoint(config)
    assert str(refusal.value) == (
        f"ckpt_path: {checkpoint} holds a LoRA of rank 2 on UNet targets ['to_q', 'to_k', 'to_v', 'to_out.0'] and "
        "text-encoder targets ['q_proj', 'k_proj', 'v_proj', 'out_proj'], but this run has lora.rank=4, "
        "lora.unet_targets=['to_q', 'to_v'] and text-encoder targets ['q_proj', 'k_proj', 'v_proj', 'out_proj']: "
        "set the lora.* options to the checkpoint's")


def csv_steps(path: Path) -> set[int]:
    with path.open(newline="") as file:
        return {int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")}


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_stops_with_a_checkpoint_a_summary_and_the_resume_command(tmp_path: Path, signum: int) -> None:
    """SIGTERM (SLURM, timeout, docker stop) or Ctrl-C: last.ckpt of a completed step, summary.json status
    interrupted, the exact resume command, rc 128+signal; the resume keeps the metrics logged before it."""
    run_dir = tmp_path / "run"
    process = subprocess.Popen(train_command(run_dir, "trainer.max_steps=500", "checkpoint.every_n_train_steps=2",
                                             "trainer.log_every_n_steps=1"),
                               cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(run_dir / "checkpoints" / "step-000002.ckpt", process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, output[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert summary["status"] == "interrupted" and summary["interrupted_by"] == signal.Signals(signum).name
    stopped_at = summary["global_step"]
    assert 2 <= stopped_at < 500 and checkpoint["global_step"] == stopped_at
    assert summary["resume_command"] in output
    assert csv_steps(run_dir / "csv" / "metrics.csv") == set(range(stopped_at))  # flushed on the way out

    command = shlex.split(summary["resume_command"])
    assert command[:2] == ["python", "train.py"] and f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}" in command
    command = [sys.executable, *command[1:]]
    command[command.index("trainer.max_steps=500")] = f"trainer.max_steps={stopped_at + 2}"
    resumed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == stopped_at + 2
    assert summary["resumed_from"]["step"] == stopped_at
    # the metrics from before the signal are kept; the resumed run's are beside them, where the summary says
    assert csv_steps(run_dir / "csv" / "metrics.csv") == set(range(stopped_at))
    assert summary["metrics_csv"] == [str(run_dir / "csv" / "version_0" / "metrics.csv")]
    assert csv_steps(Path(summary["metrics_csv"][0])) == {stopped_at, stopped_at + 1}


@pytest.mark.slow  # two runs: about a minute
def test_slurm_requeue_continues_in_the_job_directory(tmp_path: Path) -> None:
    """Lightning's SLURM auto-requeue with the README's `hydra.run.dir=outputs/train/$SLURM_JOB_ID`: SIGUSR1
    (`sbatch --signal=SIGUSR1@90`) saves hpc_ckpt_1.ckpt in the run directory and calls `scontrol requeue` (absent
    here), SLURM then stops the job with SIGTERM, and the requeued job, the same command under the same job id,
    continues from that checkpoint by itself."""
    job = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
           "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "4243", "SLURM_JOB_NAME": "aldar", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0"}
    run_dir = tmp_path / job["SLURM_JOB_ID"]
    first = subprocess.Popen(train_command(run_dir, "trainer.max_steps=500", "checkpoint.every_n_train_steps=2"),
                             cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, **job})
    wait_for(run_dir / "checkpoints" / "step-000002.ckpt", first)
    first.send_signal(signal.SIGUSR1)
    wait_for(run_dir / "hpc_ckpt_1.ckpt", first)
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, output[-3000:]
    requeued_at = torch.load(run_dir / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)["global_step"]

    again = subprocess.run(train_command(run_dir, f"trainer.max_steps={requeued_at + 2}",
                                         "checkpoint.every_n_train_steps=2"),
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **job})
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == {"checkpoint": str(run_dir / "hpc_ckpt_1.ckpt"), "step": requeued_at}
    assert summary["status"] == "completed" and summary["global_step"] == requeued_at + 2
