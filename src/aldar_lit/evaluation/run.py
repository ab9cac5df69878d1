"""`evaluate.py`'s body: frames per mode (generated or reused) -> metrics -> statistics -> report files (+ W&B).

With `sweep_dir`, every training run of a multirun is evaluated in mode `simple` with its own `lora/`,
and the sweep table (rank, steps, train time, memory vs measured scores) is written next to the report.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from aldar_lit.atomic_write import write_json, write_text
from aldar_lit.data.captioning import API_KEY_ENV
from aldar_lit.evaluation import report
from aldar_lit.config.evaluate import EvalConfig, to_eval_config
from aldar_lit.evaluation.generation import collect_storyboards
from aldar_lit.evaluation.metrics import (Measurements, Scorers, build_scorers, compare, frames_of,
                                          load_reference_images, measure, measurement_row, summarise)
from aldar_lit.evaluation.vlm_judge import JudgeItem, JudgeReport, judge
from aldar_lit.pipelines.card_defaults import evaluate_with_card
from aldar_lit.pipelines.generator import check_lora_dir, resolve_device
from aldar_lit.pipelines.outputs import write_contact_sheet
from aldar_lit.quality.face_identity import build_identity_embedders
from aldar_lit.report_tables import fmt, markdown_table, to_csv
from aldar_lit.tracking import offline_sync_line, trained_adapter_artifact, use_adapter_artifact
from aldar_lit.training.sweep_summary import find_runs, summary_rows

log = logging.getLogger(__name__)
SWEEP_METRICS = ("score", "clip_t", "clip_i", "dino")


def judge_storyboards(cfg: EvalConfig, runs) -> tuple[list[dict[str, Any]], JudgeReport]:
    """vlm_<aspect> rows (0-100, NaN for a failed judgement) for every frame, or none when the judge is off."""
    frames = [f for run in runs for f in frames_of(run)]
    items = [JudgeItem((f.run.mode, f.run.story, f.run.seed, f.index), f.image, f.prompt) for f in frames]
    scores, report = judge(items, cfg.vlm_judge, os.environ.get(API_KEY_ENV))
    rows = [measurement_row(f.run, f.index, f.prompt, f"vlm_{aspect}", scores[(item.key, aspect)])
            for f, item in zip(frames, items) for aspect in cfg.vlm_judge.aspects if (item.key, aspect) in scores]
    return rows, report


def write_report(cfg: EvalConfig, out_dir: Path, runs, measurements: Measurements, scorers: Scorers,
                 modes: list[str], judge_report: Optional[JudgeReport] = None) -> dict[str, Any]:
    st = cfg.stats
    summary = summarise(measurements.rows, modes, st.num_resamples, st.confidence, st.seed)
    comparisons = compare(measurements.rows, modes, st.num_resamples, st.confidence, st.seed)
    random_weights = cfg.random_weight_parts()
    if random_weights:  # test mode: the statistics are kept, the verdicts are not
        comparisons = [{**c, "significant": None} for c in comparisons]
    write_text(out_dir / "results.csv", to_csv(measurements.rows, report.RESULT_COLUMNS))
    write_text(out_dir / "summary.csv", to_csv(summary, report.SUMMARY_COLUMNS))
    write_text(out_dir / "comparisons.csv", to_csv(comparisons, report.COMPARISON_COLUMNS))
    notes = [f"identity backend `{name}` did not run: {why}" for name, why in scorers.unavailable.items()]
    if judge_report is not None:
        notes.append(judge_report.summary())
    if cfg.reference_images is None:
        notes.append("no reference_images: CLIP-I, DINO and id_to_train were not computed")
    if "ref_guided" in modes and "simple" in modes:
        notes.append("frame 1 of ref_guided is generated exactly as in simple (it establishes the identity), so "
                     "those pairs differ by 0; frames 2..N carry the difference")
    facts = {"modes": ", ".join(modes), "stories": ", ".join(dict.fromkeys(r.story for r in runs)),
             "seeds": ", ".join(str(s) for s in cfg.suite.seeds), "storyboards": len(runs),
             "reused storyboards": sum(r.reused for r in runs), "base model": cfg.model.pretrained,
             "LoRA": cfg.lora.path, "generation": f"{cfg.generation.width}x{cfg.generation.height}, "
             f"{cfg.generation.steps} steps, CFG {cfg.generation.guidance_scale}",
             "reference images": cfg.reference_images}
    write_text(out_dir / "report.md", report.report_markdown(facts, summary, comparisons, scorers.versions(cfg),
                                                            notes, st.confidence, random_weights))
    plots = [out_dir / "metric_bars.png"]
    report.plot_metric_bars(summary, measurements.rows, plots[0])
    for backend in scorers.identity:
        plots.append(out_dir / f"identity_heatmap_{backend}.png")
        report.plot_identity_heatmaps(measurements.heatmaps, backend, plots[-1])
    for mode in modes:
        frames = [f for r in runs if r.mode == mode for f in frames_of(r)][:16]
        if frames:
            plots.append(out_dir / f"samples_{mode}.png")
            captions = [f"{f.run.story} s{f.run.seed} #{f.index}: {f.prompt}" for f in frames]
            write_contact_sheet(plots[-1], [f.image for f in frames], captions, columns=4, thumb=192)
    sync_dir = log_to_wandb(cfg, out_dir, summary, comparisons, plots) if cfg.wandb.enabled else None
    return {"summary": summary, "comparisons": comparisons, "plots": plots, "wandb_sync_dir": sync_dir}


def log_to_wandb(cfg: EvalConfig, out_dir: Path, summary, comparisons, plots: list[Path]) -> Optional[str]:
    """Log the tables and plots to a W&B run; return an offline run's folder (for `wandb sync`)."""
    import wandb

    adapter = trained_adapter_artifact(cfg.lora.path) if cfg.lora.path else None
    run = wandb.init(project=cfg.wandb.project, mode="offline" if cfg.wandb.offline else "online", dir=str(out_dir),
                     job_type="evaluate",
                     config={"modes": cfg.modes, "seeds": cfg.suite.seeds, "base_model": cfg.model.pretrained,
                             "lora": cfg.lora.path, "lora_artifact": adapter})
    sync_dir = run.sync_dir if run.offline else None
    try:
        if adapter is not None:
            use_adapter_artifact(run, adapter)
        run.log({"summary": wandb.Table(columns=list(report.SUMMARY_COLUMNS),
                                        data=[[r[c] for c in report.SUMMARY_COLUMNS] for r in summary]),
                 "comparisons": wandb.Table(columns=list(report.COMPARISON_COLUMNS),
                                            data=[[r[c] for c in report.COMPARISON_COLUMNS] for r in comparisons]),
                 **{f"plots/{p.stem}": wandb.Image(str(p)) for p in plots}})
    finally:
        run.finish()
    return sync_dir


def evaluate(cfg: EvalConfig, out_dir: Path) -> dict[str, Any]:
    references = load_reference_images(cfg.reference_images, cfg.max_reference_images)
    if cfg.lora.path is not None and cfg.sweep_dir is None:
        check_lora_dir(cfg.lora.path)
    device = str(resolve_device(cfg.generation.device))
    identity = build_identity_embedders(cfg.identity, device)  # a missing or corrupt face model shows before any frame
    runs = collect_storyboards(cfg, out_dir, cfg.lora.path, cfg.modes)
    scorers = build_scorers(cfg, device, *identity)
    measurements = measure(runs, scorers, references)
    judged, judge_report = judge_storyboards(cfg, runs)
    measurements.rows.extend(judged)
    write_json(out_dir / "vlm_judge.json", judge_report.as_dict())
    result = write_report(cfg, out_dir, runs, measurements, scorers, cfg.modes, judge_report)
    write_json(out_dir / "evaluation.json", {"summary": result["summary"],
                                                   "comparisons": result["comparisons"]})
    return result


def evaluate_sweep(cfg: EvalConfig, out_dir: Path) -> dict[str, Any]:
    """Each finished run of the sweep in mode simple: training cost (summary.json) next to measured scores."""
    sweep_dir = Path(cfg.sweep_dir).expanduser()
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"sweep_dir: no run with a summary.json under {str(sweep_dir)!r}")
    for run in runs:
        check_lora_dir(run["dir"] / "lora")
    references = load_reference_images(cfg.reference_images, cfg.max_reference_images)
    device = str(resolve_device(cfg.generation.device))
    identity = build_identity_embedders(cfg.identity, device)
    scorers = None
    rows = summary_rows(runs)
    for run, row in zip(runs, rows):
        label = f"sweep/{run['dir'].name}"
        run_cfg = replace(cfg, frames_from=[], lora=replace(cfg.lora, path=str(run["dir"] / "lora")))
        boards = collect_storyboards(run_cfg, out_dir, run_cfg.lora.path, ["simple"], label=label)
        scorers = scorers or build_scorers(cfg, device, *identity)
        measured = measure(boards, scorers, references)
        summary = summarise(measured.rows, ["simple"], cfg.stats.num_resamples, cfg.stats.confidence, cfg.stats.seed)
        for entry in summary:
            row[entry["metric"]] = entry["mean"]
            row[f"{entry['metric']}_ci"] = f"[{fmt(entry['ci_low'])}, {fmt(entry['ci_high'])}]"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_text(out_dir / "sweep_eval.csv", to_csv(rows, columns))
    shown = [c for c in ("run", "overrides", "lora_rank", "global_step", "best_step", "best_score", "train_seconds",
                         "peak_memory_bytes", "adapter_bytes", *SWEEP_METRICS) if c in columns]
    shown += [c for c in columns if c.startswith(("id_to_train/", "face_detected/"))]
    table = markdown_table(shown, [[fmt(r.get(c)) for c in shown] for r in rows])
    write_text(out_dir / "sweep_eval.md",
                      "\n".join([f"# Sweep evaluation: {sweep_dir}", "",
                                 f"Every run's LoRA in mode simple on the suite ({len(cfg.suite.seeds)} seeds); "
                                 "scores are means over the suite's frames (CIs in sweep_eval.csv); score is the "
                                 "scorer of best_score (train.py's val/score at best_step) on these frames.", ""]
                                + table) + "\n")
    metrics = [m for m in (*SWEEP_METRICS, *(c for c in columns if c.startswith("id_to_train/")))
               if any(isinstance(r.get(m), float) and not math.isnan(r[m]) for r in rows)]
    report.plot_sweep(rows, metrics, out_dir / "sweep_eval.png")
    return {"rows": rows}


def closing_summary(cfg: EvalConfig, out_dir: Path, result: dict[str, Any]) -> str:
    """evaluate.py's last lines: where the report is, each mode's score, and whether the numbers mean anything."""
    report_file = out_dir / ("sweep_eval.md" if cfg.sweep_dir is not None else "report.md")
    lines = [f"evaluation written to {out_dir}", f"  report: {report_file}"]
    for row in result.get("summary", []):
        if row["metric"] == "score":
            lines.append(f"  score ({row['mode']}): {report.interval(row)}")
    if result.get("wandb_sync_dir"):
        lines.append(offline_sync_line(result["wandb_sync_dir"]))
    random_weights = cfg.random_weight_parts()
    if random_weights:
        lines.append(f"  test mode, random weights ({'; '.join(random_weights)}): these numbers measure nothing")
    return "\n".join(lines)


def run(cfg: DictConfig) -> dict[str, Any]:
    config = evaluate_with_card(to_eval_config(cfg))
    out_dir = Path(config.paths.output_dir)
    result = evaluate_sweep(config, out_dir) if config.sweep_dir is not None else evaluate(config, out_dir)
    log.info(closing_summary(config, out_dir, result))
    return result
