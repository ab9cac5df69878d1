"""A sweep's report: one row per run (overrides, best score, its standard error and step, cost), as CSV, Markdown
and a plot. It names the best run only when it is ahead of the runner-up by more than noise, and never when the runs
recorded random weights (test mode).

For an Optuna search (experiment=lr_search: the study in <sweep dir>/optuna.db) each row also names its trial,
and the study's best trial is the one marked.

Runs after a Hydra multirun through `SweepSummaryCallback` (conf/hydra/default.yaml), or by hand:
    python -m aldar_lit.training.sweep_summary multirun/train/2026-01-01_12-00-00
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aldar_lit.artifacts import RUN_SUMMARY, RunSummary, read_run_summary
from aldar_lit.atomic_write import write_text
from aldar_lit.report_tables import fmt, markdown_table, pyplot, save_figure, to_csv

log = logging.getLogger(__name__)

OPTUNA_STORAGE = "optuna.db"  # experiment=lr_search's hydra.sweeper.storage
COLUMNS = ("run", "overrides", "best_score", "score_se", "best_step", "global_step", "train_seconds",
           "peak_memory_bytes", "adapter_bytes", "trainable_params", "lora_rank")


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run directory's summary (`RunSummary`) and Hydra overrides (`.hydra/overrides.yaml`)."""
    summary = read_run_summary(run_dir)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return {"dir": run_dir, "summary": summary, "overrides": list(overrides or [])}


def find_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every run under `sweep_dir` that finished (has a summary.json), in job order."""
    def job_order(path: Path) -> tuple[int, str]:
        name = path.parent.relative_to(sweep_dir).as_posix()
        return (int(name), name) if name.isdigit() else (sys.maxsize, name)

    return [read_run(path.parent) for path in sorted(sweep_dir.glob(f"*/{RUN_SUMMARY}"), key=job_order)]


def swept_overrides(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """key -> value per run, for the override keys whose values differ between runs (the sweep axes)."""
    per_run = [dict(o.split("=", 1) for o in run["overrides"] if "=" in o) for run in runs]
    keys = sorted({k for overrides in per_run for k in overrides})
    axes = {k: [overrides.get(k, "") for overrides in per_run] for k in keys}
    return {k: values for k, values in axes.items() if len(set(values)) > 1}


def optuna_trials(sweep_dir: Path, runs: list[dict[str, Any]]) -> tuple[list[int | None], int | None, str] | None:
    """Each run's trial number in the sweep's Optuna study (matched by the trial's parameters, which the sweeper
    passed as the run's overrides), the best trial's number and a one-line account of the study; None without one."""
    database = sweep_dir / OPTUNA_STORAGE
    if not database.is_file():
        return None
    import optuna  # only for an Optuna sweep

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{database.resolve()}")
    trials_of: dict[frozenset[str], list[int]] = {}  # the same parameters may come up in several trials
    for trial in study.trials:
        trials_of.setdefault(frozenset(f"{k}={v}" for k, v in trial.params.items()), []).append(trial.number)

    def trial_number(run: dict[str, Any]) -> int | None:  # runs come in start order, as trials do
        return next((numbers.pop(0) for params, numbers in trials_of.items()
                     if numbers and params <= set(run["overrides"])), None)

    numbers = [trial_number(run) for run in runs]
    states = [trial.state.name.lower() for trial in study.trials]
    complete = [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial.number if complete else None
    counts = ", ".join(f"{states.count(state)} {state}" for state in dict.fromkeys(states))
    direction = study.direction.name.lower()
    return numbers, best, f"Optuna study `{study.study_name}` ({direction}): {len(states)} trials, {counts}"


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    axes = swept_overrides(runs)
    rows = []
    for index, run in enumerate(runs):
        summary = run["summary"]
        rows.append({
            "run": run["dir"].name,
            "overrides": " ".join(f"{k}={values[index]}" for k, values in axes.items()),
            "best_score": summary.best_score,
            "best_step": summary.best_step,
            "global_step": summary.global_step,
            "train_seconds": summary.train_seconds,
            "peak_memory_bytes": summary.peak_memory_bytes,
            "adapter_bytes": summary.adapter_bytes.get("diffusers"),
            "trainable_params": summary.trainable_params,
            "lora_rank": summary.lora.get("rank"),
            "score_se": best_score_se(summary),
        })
    return rows


def random_weight_parts(runs: list[dict[str, Any]]) -> list[str]:
    """The random-weight parts the runs recorded (a summary from before the field records none)."""
    return list(dict.fromkeys(part for run in runs for part in run["summary"].random_weights or []))


def best_score_se(summary: RunSummary) -> float | None:
    """The standard error of the run's best val/score (its validation's `score_se`); None where not recorded."""
    entry = next((h for h in summary.history if h.get("step") == summary.best_step), {})
    se = entry.get("score_se")
    return None if se is None or math.isnan(se) else se


def best_run_sentence(best: dict[str, Any], rows: list[dict[str, Any]], study: str | None) -> str:
    """Names the best run unless the runner-up is within noise: their difference below 1.96 standard errors of the
    difference, each run's error being that of the mean over its validation images (`score_se`)."""
    trial = "" if study is None else f"trial {best['trial']}, "
    named = (f"Best run: `{best['run']}` ({trial}{best['overrides'] or 'no overrides'}), val/score "
             f"{best['best_score']:.4f} at step {best['best_step']}.")
    others = [r for r in rows if r is not best and r["best_score"] is not None]
    if not others:
        return named
    runner_up = max(others, key=lambda r: r["best_score"])
    margin = best["best_score"] - runner_up["best_score"]
    if best["score_se"] is None or runner_up["score_se"] is None:
        return f"{named} Its margin over `{runner_up['run']}` ({margin:.4f}) is of unknown noise (no score_se)."
    se = math.hypot(best["score_se"], runner_up["score_se"])
    if margin < 1.96 * se:
        return (f"No best run: `{best['run']}` ({best['best_score']:.4f}) and `{runner_up['run']}` "
                f"({runner_up['best_score']:.4f}) differ by {margin:.4f}, within noise (under 1.96 standard errors "
                f"of the difference, {1.96 * se:.4f}).")
    return f"{named} Ahead of `{runner_up['run']}` by {margin:.4f}, {margin / se:.1f} standard errors."


def to_markdown(rows: list[dict[str, Any]], sweep_dir: Path, columns: tuple[str, ...] = COLUMNS,
                study: str | None = None, random_weights: list[str] | None = None) -> str:
    """With `study` (an Optuna sweep), the best run is the study's best trial (the `best_trial` column). With
    `random_weights` (test mode), no run is named best."""
    if study is None:
        best = max((r for r in rows if r["best_score"] is not None), key=lambda r: r["best_score"], default=None)
    else:
        best = next((r for r in rows if r["best_trial"]), None)
    lines = [f"# Sweep summary: {sweep_dir}", ""]
    if random_weights:
        lines += [f"**TEST MODE, random weights** ({', '.join(random_weights)}): these scores measure nothing, so no "
                  "run is named best.", ""]
    if study is not None:
        lines += [f"{study}.", ""]
    if best is not None and not random_weights:
        lines += [best_run_sentence(best, rows, study), ""]
    lines += markdown_table(columns, [[fmt(row[c]) for c in columns] for row in rows])
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> None:
    """Left: best val/score per run against the sweep axis; right: val/score over steps per run."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4))
    scored = [r for r in rows if r["best_score"] is not None]
    left.plot(range(len(scored)), [r["best_score"] for r in scored], marker="o", linestyle="none")
    left.set_xticks(range(len(scored)), [r["overrides"] or r["run"] for r in scored], rotation=30, ha="right",
                    fontsize=8)
    left.set_ylabel("best val/score")
    left.set_title("best score per run")
    for run, row in zip(runs, rows):
        history = run["summary"].history
        if history:
            right.plot([h["step"] for h in history], [h["score"] for h in history], marker="o",
                       label=row["overrides"] or row["run"])
    right.set_xlabel("step")
    right.set_ylabel("val/score")
    right.set_title("val/score during training")
    if right.lines:
        right.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_sweep_summary(sweep_dir: str | Path) -> dict[str, Path]:
    """Write `sweep_summary.{csv,md,png}` into `sweep_dir`; returns their paths."""
    sweep_dir = Path(sweep_dir)
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no run directory with a summary.json")
    rows = summary_rows(runs)
    columns, study = COLUMNS, optuna_trials(sweep_dir, runs)
    if study is not None:
        numbers, best, description = study
        for row, number in zip(rows, numbers):
            row.update(trial=number, best_trial="yes" if number is not None and number == best else "")
        columns = ("run", "trial", "best_trial", *COLUMNS[1:])
    paths = {"csv": sweep_dir / "sweep_summary.csv", "md": sweep_dir / "sweep_summary.md",
             "png": sweep_dir / "sweep_summary.png"}
    write_text(paths["csv"], to_csv(rows, columns))
    write_text(paths["md"], to_markdown(rows, sweep_dir, columns, study and description, random_weight_parts(runs)))
    plot(runs, rows, paths["png"])
    return paths


class SweepSummaryCallback(Callback):
    """Hydra callback: groups a multirun's W&B runs, and writes the sweep report when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # W&B reads the group from the environment; jobs inherit it (same process or child processes).
        os.environ.setdefault("WANDB_RUN_GROUP", f"{config.hydra.job.name}-{Path(config.hydra.sweep.dir).name}")
        # the Optuna sweeper opens its SQLite study (<sweep dir>/optuna.db) before the launcher makes the folder
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            paths = write_sweep_summary(sweep_dir)
        except FileNotFoundError as err:
            log.warning("no sweep summary: %s", err)
            return
        log.info("sweep summary: %s", paths["md"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m aldar_lit.training.sweep_summary SWEEP_DIR", file=sys.stderr)
        return 2
    paths = write_sweep_summary(args[0])
    print(paths["md"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
