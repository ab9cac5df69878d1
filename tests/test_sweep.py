"""Hydra sweeps: the report written after a multirun, and a real 2-run multirun of train.py (slow)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from aldar_lit.artifacts import RunSummary, write_run_summary
from aldar_lit.training.sweep_summary import main, write_sweep_summary
from conftest import REPO_ROOT


def fake_run(sweep_dir: Path, job: str, overrides: list[str], summary: dict) -> None:
    run_dir = sweep_dir / job
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    write_run_summary(run_dir, RunSummary(**summary))


def summary(rank: int, best: float | None, step: int | None, se: float | None = None, **fields) -> dict:
    """A run's summary fields; `se`: the standard error its best validation recorded (None: a summary without)."""
    data = {"global_step": 20, "train_seconds": 1.5 * rank, "peak_memory_bytes": 1000 * rank,
            "adapter_bytes": {"diffusers": 10 * rank, "kohya": 11 * rank}, "trainable_params": 7 * rank,
            "lora": {"rank": rank, "alpha": rank}, **fields}
    if best is not None:
        entry = {"step": step, "score": best} if se is None else {"step": step, "score": best, "score_se": se}
        data.update(best_score=best, best_step=step, history=[{"step": step // 2, "score": 0.0, "score_se": 1.0},
                                                              entry])
    return data


def test_report_has_one_row_per_run_in_job_order(tmp_path):
    common = ["experiment=rank_sweep", "model=tiny"]
    for job, rank, best in (("10", 64, 0.71), ("2", 8, 0.65), ("0", 16, 0.8)):
        fake_run(tmp_path, job, [*common, f"lora.rank={rank}"], summary(rank, best, rank * 10))
    (tmp_path / "3").mkdir()  # a job that crashed before writing its summary
    paths = write_sweep_summary(tmp_path)

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["run"] for r in rows] == ["0", "2", "10"]
    assert [r["overrides"] for r in rows] == ["lora.rank=16", "lora.rank=8", "lora.rank=64"]
    assert rows[1] == {"run": "2", "overrides": "lora.rank=8", "best_score": "0.65", "score_se": "",
                       "best_step": "80", "global_step": "20", "train_seconds": "12.0", "peak_memory_bytes": "8000",
                       "adapter_bytes": "80", "trainable_params": "56", "lora_rank": "8"}
    markdown = paths["md"].read_text()
    assert ("Best run: `0` (lora.rank=16), val/score 0.8000 at step 160. Its margin over `10` (0.0900) is of unknown "
            "noise (no score_se).") in markdown  # summaries from before score_se
    assert "| 10 | lora.rank=64 | 0.7100 | – | 640 | 20 | 96.0000 | 64000 | 640 | 448 | 64 |" in markdown
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_validation_scores_and_cli(tmp_path, capsys):
    fake_run(tmp_path, "0", ["optim.unet_lr=1e-4"], summary(4, None, None))
    fake_run(tmp_path, "1", ["optim.unet_lr=5e-4"], summary(4, None, None))
    assert main([str(tmp_path)]) == 0
    assert "| 1 | optim.unet_lr=5e-4 | – | – | – | 20 |" in capsys.readouterr().out  # unset as a dash, as in report.md
    assert main([]) == 2


def test_best_run_is_named_only_beyond_the_noise_of_the_scores(tmp_path):
    """Best and runner-up 0.0100 apart: with standard errors 0.004 each the difference's is 0.00566, so 1.96 of
    them (0.0111) cover it; with 0.002 each (0.00283) it is 3.5 standard errors ahead."""
    for se, expected in ((0.004, "No best run: `1` (0.7100) and `0` (0.7000) differ by 0.0100, within noise (under "
                                 "1.96 standard errors of the difference, 0.0111)."),
                         (0.002, "Best run: `1` (lora.rank=8), val/score 0.7100 at step 40. Ahead of `0` by 0.0100, "
                                 "3.5 standard errors.")):
        sweep_dir = tmp_path / str(se)
        for job, rank, best in (("0", 4, 0.70), ("1", 8, 0.71), ("2", 16, 0.50)):
            fake_run(sweep_dir, job, [f"lora.rank={rank}"], summary(rank, best, 40, se, random_weights=[]))
        markdown = write_sweep_summary(sweep_dir)["md"].read_text()
        assert expected in markdown
        assert "TEST MODE" not in markdown
        assert ("Best run:" in markdown) == (se == 0.002)
    rows = list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))
    assert [r["score_se"] for r in rows] == ["0.002"] * 3  # of each run's best validation, not of an earlier one


def test_random_weight_runs_are_test_mode_with_no_best_run(tmp_path):
    parts = ["model tiny (random_init=tiny)", "CLIP scorer ViT-B-32"]
    fake_run(tmp_path, "0", ["lora.rank=4"], summary(4, 0.9, 40, 0.0001, random_weights=parts))
    fake_run(tmp_path, "1", ["lora.rank=8"], summary(8, 0.1, 40, 0.0001, random_weights=parts))
    markdown = write_sweep_summary(tmp_path)["md"].read_text()
    assert markdown.splitlines()[2] == ("**TEST MODE, random weights** (model tiny (random_init=tiny), CLIP scorer "
                                        "ViT-B-32): these scores measure nothing, so no run is named best.")
    assert "Best run" not in markdown and "No best run" not in markdown


def test_empty_sweep_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        write_sweep_summary(tmp_path)


@pytest.mark.slow
def test_rank_multirun_on_the_tiny_model(tmp_path, cache_dir):
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=rank_sweep", "model=tiny", "data=demo", "trainer=cpu",
         "scorer=tiny", "logger=csv", "data.resolution=32", "data.num_workers=0", "data.demo.num_images=8",
         "data.demo.size=64", "trainer.max_steps=4", "validation.every_n_steps=2", "validation.num_inference_steps=2",
         "validation.seeds=[0]", "lora.rank=2,4", f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))
    assert [(r["run"], r["overrides"], r["lora_rank"]) for r in rows] == [("0", "lora.rank=2", "2"),
                                                                          ("1", "lora.rank=4", "4")]
    for row in rows:
        run_dir = sweep_dir / row["run"]
        run_summary = json.loads((run_dir / "summary.json").read_text())
        rank = int(row["lora_rank"])
        adapter = load_file(run_dir / "lora" / "pytorch_lora_weights.safetensors")
        downs = [t for k, t in adapter.items() if ".down." in k]  # (rank, in_features)
        assert downs and all(t.shape[0] == rank for t in downs)
        assert run_summary["lora"]["rank"] == rank and run_summary["lora"]["alpha"] == rank  # alpha follows rank
        history = run_summary["history"]
        assert [h["step"] for h in history] == [2, 4]
        best = max(history, key=lambda h: h["score"])
        assert run_summary["best_step"] == best["step"] and run_summary["best_score"] == pytest.approx(best["score"])
        assert Path(run_summary["best_checkpoint"]).is_file()
        assert float(row["best_score"]) == pytest.approx(run_summary["best_score"])
        assert int(row["best_step"]) == run_summary["best_step"]
        assert int(row["trainable_params"]) == run_summary["trainable_params"]
        assert int(row["adapter_bytes"]) == (run_dir / "lora" / "pytorch_lora_weights.safetensors").stat().st_size
        assert (run_dir / "validation" / f"step={best['step']:06d}" / "grid.png").is_file()
    assert int(rows[1]["trainable_params"]) == 2 * int(rows[0]["trainable_params"])
    assert (sweep_dir / "sweep_summary.md").is_file() and (sweep_dir / "sweep_summary.png").is_file()


SMOKE = ["model=tiny", "data=demo", "trainer=cpu", "scorer=tiny", "logger=csv", "data.resolution=32",
         "data.num_workers=0", "data.demo.num_images=8", "data.demo.size=64", "validation.every_n_steps=2",
         "validation.num_inference_steps=2", "validation.seeds=[0]"]


def test_lr_search_composes_an_optuna_tpe_study_stored_in_the_sweep_dir():
    from hydra import compose, initialize_config_dir

    from aldar_lit.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=lr_search", "hydra.sweep.dir=/sweeps/lr"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert (sweeper.direction, sweeper.study_name, sweeper.storage) == ("maximize", "lr_search",
                                                                          "sqlite:////sweeps/lr/optuna.db")
    assert dict(sweeper.params) == {"optim.unet_lr": "tag(log, interval(1e-5, 1e-3))",
                                    "optim.text_encoder_lr": "tag(log, interval(5e-6, 5e-4))",
                                    "lora.rank": "choice(8, 16, 32, 64)",
                                    "trainer.max_steps": "choice(400, 800, 1200)"}
    assert cfg.optimized_metric == "val/score" and cfg.validation.enabled
    assert cfg.lora.alpha == cfg.lora.rank


def test_optuna_sweep_summary_marks_the_studys_best_trial(tmp_path):
    import optuna

    study = optuna.create_study(study_name="lr_search", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                direction="maximize")
    for job, (lr, best) in enumerate([(1e-4, 0.5), (3e-4, 0.7), (1e-4, 0.6), (2e-5, 0.4)]):
        study.enqueue_trial({"optim.unet_lr": lr})  # trials 0 and 2 share their parameters: still one run each
        trial = study.ask()
        trial.suggest_float("optim.unet_lr", 1e-5, 1e-3, log=True)
        study.tell(trial, best)
        fake_run(tmp_path, f"2026-01-01_00-00-0{job}-{job}", [f"optim.unet_lr={trial.params['optim.unet_lr']}",
                                                              "experiment=lr_search"], summary(4, best, 2))
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # a crashed trial: no run dir with a summary
    paths = write_sweep_summary(tmp_path)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["trial"], r["best_trial"], r["best_score"]) for r in rows] == [
        ("0", "", "0.5"), ("1", "yes", "0.7"), ("2", "", "0.6"), ("3", "", "0.4")]
    markdown = paths["md"].read_text()
    assert "Optuna study `lr_search` (maximize): 5 trials, 4 complete, 1 fail." in markdown
    assert "Best run: `2026-01-01_00-00-01-1` (trial 1, optim.unet_lr=" in markdown
    assert "Its margin over `2026-01-01_00-00-02-2` (0.1000) is of unknown noise" in markdown


@pytest.mark.slow
def test_optuna_lr_search_on_the_tiny_model_continues_its_study(tmp_path, cache_dir):
    """Three TPE trials, then the same command again with one more: the study in the sweep dir grows to four."""
    import optuna

    sweep_dir = tmp_path / "search"
    command = [sys.executable, "train.py", "-m", "experiment=lr_search", *SMOKE, "trainer.max_steps=choice(4,6)",
               "lora.rank=choice(2,4)", f"hydra.sweep.dir={sweep_dir}"]
    for n_trials, expected in ((3, 3), (1, 4)):
        result = subprocess.run([*command, f"hydra.sweeper.n_trials={n_trials}"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        study = optuna.load_study(study_name="lr_search", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * expected
        rows = list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))
        assert [int(r["trial"]) for r in rows] == list(range(expected))  # a continued study adds runs, none overwritten
        assert [r["trial"] for r in rows if r["best_trial"] == "yes"] == [str(study.best_trial.number)]
        for row, trial in zip(rows, study.trials):
            assert float(row["best_score"]) == pytest.approx(trial.value)  # the value train.py returned: val/score
            assert int(row["lora_rank"]) == trial.params["lora.rank"]
            assert 1e-5 <= trial.params["optim.unet_lr"] <= 1e-3
    markdown = (sweep_dir / "sweep_summary.md").read_text()
    assert "**TEST MODE, random weights** (model tiny (random_init=tiny), CLIP scorer" in markdown  # tiny model, scorer
    assert "Best run" not in markdown  # the table's best_trial column still marks the study's best
