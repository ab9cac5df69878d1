"""Storyboard files, each written atomically: frames with PNG text metadata, a captioned contact sheet,
and a self-contained HTML page (images inlined as base64)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from aldar_lit.atomic_write import png_bytes, write_png, write_text
from aldar_lit.image_grid import image_grid


def write_frame(path: Path, image: Image.Image, metadata: dict[str, Any]) -> None:
    """A frame PNG with `prompt`, `seed`, `guidance_scale`, ... as text chunks (read back via `Image.text`)."""
    write_png(path, image, {k: str(v) for k, v in metadata.items()})


def write_contact_sheet(path: Path, images: Sequence[Image.Image], captions: Sequence[str], columns: int = 3,
                        thumb: int = 256) -> None:
    """A grid of frames, each with its number and caption underneath."""
    numbered = [f"{number}. {caption}" for number, caption in enumerate(captions, start=1)]
    write_png(path, image_grid(images, columns, thumb, numbered))


def consistency_line(consistency: dict[str, Any]) -> str:
    """The shared-attention settings in one line (or that it was off)."""
    if not consistency.get("shared_attention"):
        return "shared attention: off"
    shown = ("sample_rate", "layers", "step_range", "group_size", "anchor_frames")
    return "shared attention: " + " · ".join(f"{key} {consistency[key]}" for key in shown if key in consistency)


def storyboard_html(title: str, frames: Sequence[dict[str, Any]], images: Sequence[Image.Image],
                    consistency: dict[str, Any]) -> str:
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
            f"<p>CLIP-T {scores.get('prompt_clip_t')} · identity {scores.get('identity')} · "
            f"{html.escape(verdict)}</p>{warnings}</figcaption></figure>"
        )
    style = ("body{font-family:sans-serif;margin:2em}main{display:flex;flex-wrap:wrap;gap:1em}"
             "figure{width:300px;margin:0}img{width:300px;height:auto;image-rendering:pixelated}"
             "p{margin:.2em 0;font-size:.85em}.warn{color:#b00}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(consistency_line(consistency))}</p><main>{''.join(cards)}</main>"
            "</body></html>")


def write_html(path: Path, title: str, frames: Sequence[dict[str, Any]], images: Sequence[Image.Image],
               consistency: dict[str, Any]) -> None:
    write_text(path, storyboard_html(title, frames, images, consistency))
