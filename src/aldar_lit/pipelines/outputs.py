"""Storyboard files, each written atomically: frames with PNG text metadata, a captioned contact sheet,
and a self-contained HTML page (images inlined as base64)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from PIL import Image, ImageDraw

from aldar_lit.atomic_write import png_bytes, write_png, write_text
from aldar_lit.image_grid import LINE_HEIGHT, image_grid
from aldar_lit.report_tables import fmt


def write_frame(path: Path, image: Image.Image, metadata: dict[str, Any]) -> None:
    """A frame PNG with `prompt`, `seed`, `guidance_scale`, ... as text chunks (read back via `Image.text`)."""
    write_png(path, image, {k: str(v) for k, v in metadata.items()})


def write_contact_sheet(path: Path, images: Sequence[Image.Image], captions: Sequence[str], columns: int = 3,
                        thumb: int = 256, flagged: Sequence[bool] = (), banner: Optional[str] = None) -> None:
    """A grid of frames, each with its number and caption underneath; `flagged` frames (failed QA) get a red
    border and a "QA failed" label, and a `banner` (test mode) a red line above the grid."""
    flagged = list(flagged) + [False] * (len(images) - len(flagged))
    numbered = [f"{number}. {'[QA failed] ' if bad else ''}{caption}"
                for number, (caption, bad) in enumerate(zip(captions, flagged), start=1)]
    sheet = image_grid([qa_failed_mark(image) if bad else image for image, bad in zip(images, flagged)], columns,
                       thumb, numbered)
    if banner:
        framed = Image.new("RGB", (sheet.width, sheet.height + 2 * LINE_HEIGHT), "white")
        framed.paste(sheet, (0, 2 * LINE_HEIGHT))
        ImageDraw.Draw(framed).text((4, LINE_HEIGHT // 2), banner, fill="red")
        sheet = framed
    write_png(path, sheet)


def qa_failed_mark(image: Image.Image) -> Image.Image:
    """`image` with a red border (1/32 of its width, so it survives the thumbnail) and a "QA failed" label."""
    marked = image.convert("RGB")
    draw, width = ImageDraw.Draw(marked), max(2, marked.width // 32)
    draw.rectangle((0, 0, marked.width - 1, marked.height - 1), outline="red", width=width)
    draw.rectangle((width, width, width + 60, width + LINE_HEIGHT), fill="red")
    draw.text((width + 3, width + 1), "QA failed", fill="white")
    return marked


def consistency_line(consistency: dict[str, Any]) -> str:
    """The shared-attention settings in one line (or that it was off)."""
    if not consistency.get("shared_attention"):
        return "shared attention: off"
    shown = ("sample_rate", "layers", "step_range", "group_size", "anchor_frames")
    return "shared attention: " + " · ".join(f"{key} {consistency[key]}" for key in shown if key in consistency)


def storyboard_html(title: str, frames: Sequence[dict[str, Any]], images: Sequence[Image.Image],
                    consistency: dict[str, Any], banner: Optional[str] = None) -> str:
    """One page, no external files: each frame inlined as a data URI next to its prompt, settings and QA."""
    cards = []
    for frame, image in zip(frames, images):
        data = base64.b64encode(png_bytes(image)).decode("ascii")
        final = frame["attempts"][frame["chosen_attempt"] - 1]  # attempts count from 1
        qa = final.get("qa") or {}
        scores = qa.get("scores", {})
        verdict = "no QA" if not qa else ("passed" if qa.get("passed") else "FLAGGED: " + ", ".join(qa["failures"]))
        warnings = "".join(f"<p class=warn>{html.escape(w)}</p>" for w in frame.get("warnings", []))
        cards.append(
            f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"frame {frame['index']}\">"
            f"<figcaption><b>{frame['index']}. {html.escape(frame['scene']['text'])}</b>"
            f"<p>seed {final['seed']} · CFG {final['guidance_scale']} · attempts {len(frame['attempts'])}"
            f" · adapters {html.escape(', '.join(frame['active_adapters']) or 'none')}</p>"
            f"<p>CLIP-T {fmt(scores.get('prompt_clip_t'), 3)} · identity {fmt(scores.get('identity'), 3)} · "
            f"{html.escape(verdict)}</p>{warnings}</figcaption></figure>"
        )
    style = ("body{font-family:sans-serif;margin:2em}main{display:flex;flex-wrap:wrap;gap:1em}"
             "figure{width:300px;margin:0}img{width:300px;height:auto;image-rendering:pixelated}"
             "p{margin:.2em 0;font-size:.85em}.warn{color:#b00}.test{color:#b00;font-weight:bold}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>"
            + (f"<p class=test>{html.escape(banner)}: the images and scores exercise the pipeline only</p>"
               if banner else "")
            + f"<h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(consistency_line(consistency))}</p><main>{''.join(cards)}</main>"
            "</body></html>")


def write_html(path: Path, title: str, frames: Sequence[dict[str, Any]], images: Sequence[Image.Image],
               consistency: dict[str, Any], banner: Optional[str] = None) -> None:
    write_text(path, storyboard_html(title, frames, images, consistency, banner))
