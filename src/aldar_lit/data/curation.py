"""Curate a folder of raw renders: drop unreadable, small, blurry, face-less and near-duplicate images.

Writes the kept images (with their captions) to `<output_dir>/images` (train with
`data.root=<output_dir>/images`), and beside it `report.json` and `report.md` listing every dropped
file and why plus the view/pose balance of the kept set against the technical justification's split, and
`contact_sheet.png` showing the kept set.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from aldar_lit.atomic_write import replacing_dir
from aldar_lit.config import ConfigError, to_schema
from aldar_lit.image_grid import image_grid
from aldar_lit.images import DataError, list_image_files, load_rgb, read_caption
from aldar_lit.quality.faces import haar_cascade
from aldar_lit.tool_command import tool_command
from aldar_lit.config.prep import CurateConfig

log = logging.getLogger(__name__)

KEPT_DIR, REPORT_JSON, REPORT_MD, CONTACT_SHEET = "images", "report.json", "report.md", "contact_sheet.png"


@dataclass
class Verdict:
    file: str
    kept: bool = True
    reason: str | None = None
    width: int = 0
    height: int = 0
    sharpness: float = 0.0
    phash: str = ""
    faces: int | None = None
    category: str | None = None


def greyscale(image: Image.Image, max_side: int) -> np.ndarray:
    """8-bit grey pixels, downscaled (never upscaled) so the longer side is at most `max_side`."""
    grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    scale = max_side / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, (round(grey.shape[1] * scale), round(grey.shape[0] * scale)),
                          interpolation=cv2.INTER_AREA)
    return grey


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian: low when an image has few sharp edges (blur, defocus, motion)."""
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def perceptual_hash(grey: np.ndarray) -> int:
    """64-bit pHash: signs of the 8x8 lowest DCT frequencies of a 32x32 thumbnail against their median."""
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def count_faces(grey: np.ndarray) -> int:
    faces = haar_cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    return len(faces)


def balance_category(caption: str, keywords: dict[str, list[str]]) -> str:
    """The first category (in `keywords` order) one of whose words the caption contains, else `misc`."""
    text = caption.lower()
    for category, words in keywords.items():
        if any(word.lower() in text for word in words):
            return category
    return "misc"


def balance_report(verdicts: list[Verdict], reference: dict[str, int]) -> dict[str, Any]:
    kept = [v for v in verdicts if v.kept]
    captioned = [v for v in kept if v.category is not None]
    total_reference = sum(reference.values())
    rows = {}
    for category, count in reference.items():
        actual = sum(v.category == category for v in captioned)
        expected = count / total_reference * len(captioned)
        rows[category] = {"count": actual, "reference": count, "expected_for_this_size": round(expected, 1),
                          "share": round(actual / len(captioned), 3) if captioned else 0.0,
                          "reference_share": round(count / total_reference, 3)}
    return {"categories": rows, "captioned": len(captioned), "uncaptioned": len(kept) - len(captioned)}


def thumbnail(path: Path, size: int) -> Image.Image:
    """The image at `path` shrunk to fit `size` x `size`, so that a contact sheet never holds the full-size set."""
    image = load_rgb(path)
    image.thumbnail((size, size))
    return image


def inspect(path: Path, name: str, cfg: CurateConfig) -> Verdict:
    verdict = Verdict(file=name)
    try:
        image = load_rgb(path, cfg.max_image_pixels)
    except DataError as err:
        verdict.kept, verdict.reason = False, f"unreadable: {err}"
        return verdict
    verdict.width, verdict.height = image.size
    grey = greyscale(image, cfg.analysis_side)
    verdict.sharpness = round(sharpness(grey), 2)
    verdict.phash = f"{perceptual_hash(grey):016x}"
    caption_file = path.with_suffix(".txt")
    if caption_file.is_file():
        try:
            verdict.category = balance_category(read_caption(caption_file), cfg.balance_keywords)
        except DataError as err:
            log.warning("%s", err)
    if min(image.size) < cfg.min_side:
        verdict.kept, verdict.reason = False, f"too small: {image.width}x{image.height} < min_side={cfg.min_side}"
    elif verdict.sharpness < cfg.blur_threshold:
        verdict.kept, verdict.reason = False, (f"blurry: variance of Laplacian {verdict.sharpness} "
                                               f"< blur_threshold={cfg.blur_threshold}")
    elif cfg.require_face:
        verdict.faces = count_faces(grey)
        if verdict.faces == 0:
            verdict.kept, verdict.reason = False, "no face found (require_face=true)"
    return verdict


def drop_near_duplicates(verdicts: list[Verdict], max_distance: int) -> None:
    """Keep the largest, then sharpest, image of each group of near-duplicates."""
    candidates = sorted((v for v in verdicts if v.kept), key=lambda v: (-v.width * v.height, -v.sharpness, v.file))
    kept: list[Verdict] = []
    for verdict in candidates:
        twin = next((k for k in kept if hamming(int(k.phash, 16), int(verdict.phash, 16)) <= max_distance), None)
        if twin is None:
            kept.append(verdict)
        else:
            distance = hamming(int(twin.phash, 16), int(verdict.phash, 16))
            verdict.kept, verdict.reason = False, f"near-duplicate of {twin.file} (pHash distance {distance})"


def _place(source: Path, target: Path, link: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if link == "symlink":
        target.symlink_to(source.resolve())
    elif link == "hardlink":
        os.link(source, target)
    else:
        shutil.copy2(source, target)


def markdown_report(report: dict[str, Any]) -> str:
    lines = [f"# Curation of {report['input_dir']}", "",
             f"Kept **{len(report['kept'])}** of {report['images']} images; dropped {len(report['dropped'])}.", "",
             "## Dropped", "", "| file | reason |", "|---|---|"]
    lines += [f"| {d['file']} | {d['reason']} |" for d in report["dropped"]] or ["| (none) | |"]
    balance = report["balance"]
    lines += ["", "## View / pose balance of the kept set (from captions)", "",
              f"{balance['captioned']} kept images have captions; {balance['uncaptioned']} do not.", "",
              "| category | count | share | seed reference | expected at this size |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {r['count']} | {r['share']:.0%} | {r['reference']} ({r['reference_share']:.0%}) | "
              f"{r['expected_for_this_size']} |" for c, r in balance["categories"].items()]
    return "\n".join(lines) + "\n"


def curate(cfg: CurateConfig) -> dict[str, Any]:
    """Filter `cfg.input_dir` into `cfg.output_dir`; return the report written there."""
    input_dir, output_dir = Path(cfg.input_dir).expanduser(), Path(cfg.output_dir).expanduser()
    if not input_dir.is_dir():
        raise ConfigError(f"input_dir: directory {input_dir} does not exist")
    if output_dir.resolve() == input_dir.resolve() or input_dir.resolve() in output_dir.resolve().parents:
        raise ConfigError(f"output_dir: must lie outside input_dir ({output_dir})")
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / REPORT_JSON).is_file():
        raise ConfigError(f"output_dir: {output_dir} is not empty and holds no earlier curation; choose another")

    paths = {p.relative_to(input_dir).as_posix(): p for p in list_image_files(input_dir)}
    verdicts = [inspect(path, name, cfg) for name, path in paths.items()]
    drop_near_duplicates(verdicts, cfg.near_duplicate_distance)
    kept = [v for v in verdicts if v.kept]
    report = {
        "input_dir": str(input_dir), "kept_dir": str(output_dir / KEPT_DIR), "images": len(verdicts),
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("input_dir", "output_dir")},
        "kept": [asdict(v) for v in kept],
        "dropped": [{"file": v.file, "reason": v.reason} for v in verdicts if not v.kept],
        "balance": balance_report(verdicts, cfg.balance_reference),
    }

    with replacing_dir(output_dir) as staging:  # an earlier curation (checked above) is replaced as a whole
        for verdict in kept:
            source = paths[verdict.file]
            target = staging / KEPT_DIR / verdict.file
            _place(source, target, cfg.link)
            if source.with_suffix(".txt").is_file():
                _place(source.with_suffix(".txt"), target.with_suffix(".txt"), cfg.link)
        (staging / KEPT_DIR).mkdir(exist_ok=True)
        (staging / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (staging / REPORT_MD).write_text(markdown_report(report), encoding="utf-8")
        sheet = image_grid([thumbnail(paths[v.file], cfg.contact_sheet_thumb) for v in kept], cfg.contact_sheet_columns,
                           cfg.contact_sheet_thumb, [v.file for v in kept], max_caption_lines=1)
        sheet.save(staging / CONTACT_SHEET)
    return report


def run_curation(cfg: Any) -> dict[str, Any]:
    """`python -m aldar_lit.curate`'s body."""
    config = to_schema(cfg, CurateConfig, "curate_schema")
    report = curate(config)
    for dropped in report["dropped"]:
        log.info("dropped %s: %s", dropped["file"], dropped["reason"])
    log.info(closing_summary(report, Path(config.output_dir).expanduser()))
    return report


def closing_summary(report: dict[str, Any], output_dir: Path) -> str:
    """curate's last lines: what was kept and where, the reports beside it, and the captioning command."""
    caption = " ".join([*tool_command("caption", "-m aldar_lit.caption"),  # not a script in a checkout: python -m
                        shlex.quote(f"input_dir={report['kept_dir']}")])
    return "\n".join([f"kept {len(report['kept'])} of {report['images']} images in {report['kept_dir']}",
                      f"  report:        {output_dir / REPORT_MD} (each dropped image and why)",
                      f"  contact sheet: {output_dir / CONTACT_SHEET}",
                      "next, caption them (images with a .txt caption keep it):", f"  {caption}"])
