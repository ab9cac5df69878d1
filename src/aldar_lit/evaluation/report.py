"""Evaluation report files under the run dir, each written atomically: results.csv (image x metric),
summary.csv, comparisons.csv, report.md, plots (*.png) and sample grids per mode."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aldar_lit.evaluation.metrics import DEFINITIONS, base_metric, storyboard_means
from aldar_lit.report_tables import fmt, markdown_table, pyplot, save_figure

RESULT_COLUMNS = ("mode", "story", "seed", "frame", "prompt", "metric", "value")
SUMMARY_COLUMNS = ("mode", "metric", "n", "n_total", "storyboards", "mean", "ci_low", "ci_high")
COMPARISON_COLUMNS = ("metric", "treatment", "control", "n_pairs", "n_units", "storyboards", "mean_diff", "ci_low",
                      "ci_high", "p_value", "p_method", "mde", "significant")


def interval(row: dict[str, Any], key: str = "mean") -> str:
    if math.isnan(row["ci_low"]):
        return fmt(row[key])
    return f"{fmt(row[key])} [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"


def how_to_read(summary: list[dict[str, Any]], comparisons: list[dict[str, Any]], confidence: float,
                random_weights: list[str]) -> list[str]:
    """The report's opening: test-mode warning, what the statistics are, which differences hold, detection rates."""
    lines = ["## How to read this", ""]
    if random_weights:
        lines += ["**Test mode: random weights (" + "; ".join(random_weights) + ").** The numbers exercise the "
                  "pipeline and measure nothing about the character; no difference below is claimed as "
                  "significant.", ""]
    lines += [f"- Statistics are clustered by storyboard (story x seed): frames of one storyboard share its seed and, "
              f"in `ref_guided`, frame 1's face, so whole storyboards are resampled for the {confidence:.0%} intervals "
              "(cluster bootstrap, expanded percentile) and the paired differences are tested by flipping the "
              "signs of storyboard-level differences (exact up to 16 storyboards). A difference is significant "
              "when both agree (the "
              f"interval excludes 0 and p < {1 - confidence:.2g}); MDE is the smallest true "
              "difference the suite detects with 80 % power: (t_{1-a/2} + t_{0.8}) x SD of the storyboard-level "
              "differences / sqrt(storyboards), t with storyboards - 1 degrees of freedom.",
              "- Identity metrics exist only where a face was detected: read them next to `face_detected`. "
              "Cosines: good text-image matches score ~0.25-0.35 on CLIP-T (ViT-L/14), DreamBooth's subject "
              "fidelity is CLIP-I ~0.80, DINO ~0.67 (DreamBench)."]
    if not random_weights:
        held = [f"`{c['metric']}` {c['treatment']} − {c['control']} ({fmt(c['mean_diff'])}, "
                f"p = {fmt(c['p_value'], 3)})" for c in comparisons if c["significant"]]
        lines.append("- Significant under the clustered analysis: " + (", ".join(held) if held else "none") + ".")
    backends = dict.fromkeys(r["metric"].split("/", 1)[1] for r in summary
                             if base_metric(r["metric"]) == "face_detected")
    for backend in backends:
        rates = []
        for metric, label in (("face_detected", "face detected"), ("verified_to_frame1", "same person as frame 1"),
                              ("verified_to_train", "same person as the training images")):
            shown = [f"{r['mode']} {fmt(r['mean'], 2)}" for r in summary if r["metric"] == f"{metric}/{backend}"]
            if shown:
                rates.append(f"{label}: " + ", ".join(shown))
        lines.append(f"- Identity rates (`{backend}`; a frame without a face counts as not verified): "
                     + "; ".join(rates) + ".")
    return lines + story_reading(summary) + [""]


STORY_SCALES = {
    "char_cross": "`char_cross/<clip|dino>` and `char_self/<clip|dino>` (ViStoryBench's character cross- and "
                  "self-similarity) are cosines in [-1, 1] on the character crop, not the whole frame; the nearest "
                  "published scale is DreamBench's whole-image CLIP-I ~0.80 / DINO ~0.67 above; ViStoryBench's own "
                  "values use other encoders and crops, so no published reference value applies",
    "copy_paste": "`copy_paste` is in [0, 1]: 0.5 means a frame's face is as close to the anchor it was conditioned on "
                  "(frame 1's face) as to the character's training images, near 1 that the IP-Adapter copies the "
                  "anchor; compare ref_guided with simple (same anchor, no conditioning); no published reference value",
    "style_consistency": "`style_consistency` is a cosine in [-1, 1] between whole frames' style embeddings, per "
                         "storyboard; no published reference value for this embedding",
    "vlm_scene": "`vlm_scene`, `vlm_character_action`, `vlm_camera` are a vision-language model's 0-4 judgement x 25 "
                 "(0-100); a failed judgement has no value; no published reference value for this suite",
}


def story_reading(summary: list[dict[str, Any]]) -> list[str]:
    """Scales of the story-visualisation measures present, and their per-mode rates."""
    present = {base_metric(r["metric"]) for r in summary}
    lines = [f"- {text}." for key, text in STORY_SCALES.items() if key in present]
    rates = []
    for metric, label in (("crop_from_face", "character crop from a face"),
                          ("character_count_match", "expected number of characters"),
                          ("copy_paste", "copy-paste degree")):
        shown = [f"{r['mode']} {fmt(r['mean'], 2)}" for r in summary if r["metric"] == metric]
        if shown:
            rates.append(f"{label}: " + ", ".join(shown))
    if rates:
        lines.append("- Story measures per mode: " + "; ".join(rates) + ".")
    return lines


def significance(comparison: dict[str, Any]) -> str:
    if comparison["significant"] is None:
        return "not claimed"
    return "**yes**" if comparison["significant"] else "no"


def report_markdown(facts: dict[str, Any], summary: list[dict[str, Any]], comparisons: list[dict[str, Any]],
                    versions: dict[str, str], notes: list[str], confidence: float,
                    random_weights: Sequence[str] = ()) -> str:
    """report.md; with `random_weights` (what has them) it opens with a test-mode warning and claims nothing."""
    pct = f"{confidence:.0%}"
    lines = ["# Evaluation report", ""] + how_to_read(summary, comparisons, confidence, list(random_weights))
    lines += [f"- {key}: {fmt(value)}" for key, value in facts.items()] + [""]
    lines += ["## Models used", ""] + [f"- {k}: {v}" for k, v in versions.items()] + [""]
    for mode in dict.fromkeys(r["mode"] for r in summary):
        lines += [f"## Mode `{mode}`", "",
                  f"Mean with its {pct} storyboard-clustered bootstrap interval; n = images (storyboards for "
                  "per-story metrics) with a value, of all generated.", ""]
        lines += markdown_table(["metric", f"mean [{pct} CI]", "n / total", "storyboards"],
                                [[r["metric"], interval(r), f"{r['n']} / {r['n_total']}", str(r["storyboards"])]
                                 for r in summary if r["mode"] == mode]) + [""]
    shown = [c for c in comparisons if c["n_pairs"] > 0]
    if shown:
        lines += ["## Paired comparisons", "",
                  f"Difference treatment − control over the same (story, seed, frame) units, {pct} interval from "
                  "resampled storyboards, two-sided sign-flip p-value on storyboard-level differences, and the "
                  "minimum detectable effect (MDE, 80 % power). Units where either mode has no value (e.g. no "
                  "face) are left out of that comparison and counted in n pairs. With one storyboard there is no "
                  "interval and no test.", ""]
        lines += markdown_table(
            ["metric", "treatment − control", f"difference [{pct} CI]", "p (sign-flip)", "MDE", "storyboards",
             "n pairs / units", "significant"],
            [[c["metric"], f"{c['treatment']} − {c['control']}", interval(c, "mean_diff"), fmt(c["p_value"], 3),
              fmt(c["mde"]), str(c["storyboards"]), f"{c['n_pairs']} / {c['n_units']}", significance(c)]
             for c in shown])
        methods = sorted({c["p_method"] for c in shown if c["p_method"]})
        lines += ([""] + ([f"p-values: {', '.join(methods)}."] if methods else []) + [""])
        hidden = sorted({c["metric"] for c in comparisons if c["n_pairs"] == 0})
        if hidden:
            lines += [f"Not comparable (no unit has a value in both modes, e.g. no face detected): "
                      f"{', '.join(hidden)}.", ""]
    lines += ["## Metric definitions", ""] + [f"- `{k}`: {v}" for k, v in DEFINITIONS.items()]
    lines += ["- `<metric>/<backend>`: identity metrics per face-embedding backend; cosine scales differ between "
              "backends (dlib's descriptors are not centred), so compare modes within one backend.", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def plot_metric_bars(summary: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per metric: a bar per mode with its CI as error bar, and a dot per storyboard (its mean)."""
    plt = pyplot()
    metrics = [m for m in dict.fromkeys(r["metric"] for r in summary)
               if base_metric(m) not in ("qa_attempts", "seconds", "peak_memory_gb")]
    columns = min(4, len(metrics)) or 1
    panel_rows = max(1, math.ceil(len(metrics) / columns))
    fig, axes = plt.subplots(panel_rows, columns, figsize=(3.2 * columns, 2.8 * panel_rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        entries = [r for r in summary if r["metric"] == metric]
        means = np.array([r["mean"] for r in entries], float)
        low = np.nan_to_num(means - np.array([r["ci_low"] for r in entries], float))
        high = np.nan_to_num(np.array([r["ci_high"] for r in entries], float) - means)
        ax.bar(range(len(entries)), np.nan_to_num(means), yerr=[low, high], capsize=4, color="#4c72b0")
        for position, entry in enumerate(entries):
            points = storyboard_means(rows, entry["mode"], metric)
            ax.scatter(position + np.linspace(-0.25, 0.25, len(points)), points, s=9, color="black", alpha=0.7,
                       zorder=3)
        ax.set_xticks(range(len(entries)), [f"{r['mode']}\nn={r['n']}/{r['n_total']}" for r in entries], fontsize=7)
        ax.set_title(metric, fontsize=9)
        if np.isnan(means).all():
            ax.text(0.5, 0.5, "no values (n=0)", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def plot_identity_heatmaps(heatmaps: dict[tuple, np.ndarray], backend: str, path: Path, max_columns: int = 4) -> None:
    save_figure(identity_heatmaps_figure(heatmaps, backend, max_columns), path)


def identity_heatmaps_figure(heatmaps: dict[tuple, np.ndarray], backend: str, max_columns: int = 4):
    """Frame x frame face cosines per storyboard: one row per mode, one column per (story, seed)."""
    plt = pyplot()
    keys = [k for k in heatmaps if k[3] == backend]
    modes = list(dict.fromkeys(k[0] for k in keys))
    stories = list(dict.fromkeys(k[1:3] for k in keys))[:max_columns]
    fig, axes = plt.subplots(len(modes), len(stories), figsize=(3 * len(stories), 2.8 * len(modes)), squeeze=False,
                             layout="constrained")  # two-line titles clear the axis labels of the row above
    image = None
    for r, mode in enumerate(modes):
        for c, (story, seed) in enumerate(stories):
            ax = axes[r, c]
            matrix = heatmaps.get((mode, story, seed, backend))
            if matrix is None:
                ax.axis("off")
                continue
            image = ax.imshow(np.ma.masked_invalid(matrix), vmin=-1 if backend != "dlib" else 0.5, vmax=1,
                              cmap="viridis")
            ax.set_title(f"{mode}\n{story} seed {seed}", fontsize=7)
            ax.set_xlabel("frame", fontsize=7)
            ax.set_ylabel("frame", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=f"face cosine ({backend}); blank: no face")
    return fig


def plot_sweep(rows: list[dict[str, Any]], metrics: list[str], path: Path) -> None:
    """Evaluation score per run against LoRA rank and against training steps."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, key, label in ((axes[0], "lora_rank", "LoRA rank"), (axes[1], "global_step", "training steps")):
        for metric in metrics:
            points = sorted((r[key], r[metric]) for r in rows if r.get(key) is not None and
                            not math.isnan(r.get(metric, math.nan)))
            if points:
                axis.plot(*zip(*points), marker="o", label=metric)
        axis.set_xlabel(label)
        axis.set_ylabel("score (mean over the suite)")
        if axis.lines:
            axis.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
