"""Curation drops what it should, says why, and writes the kept set with a contact sheet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from PIL import Image, ImageEnhance, ImageFilter

from aldar_lit.config import ConfigError
from aldar_lit.data.curation import balance_category, curate, greyscale, hamming, perceptual_hash
from aldar_lit.data.dataset import scan_folder
from aldar_lit.offline.demo_character import generate_demo_dataset
from aldar_lit.config import to_schema
from aldar_lit.config.prep import CurateConfig, register_prep_configs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Six distinct demo renders plus a near-duplicate, a blurred one, a tiny one and a broken file."""
    demo = generate_demo_dataset(tmp_path_factory.mktemp("demo") / "d", num_images=8, size=192, seed=3)
    folder = tmp_path_factory.mktemp("raw")
    for i in range(6):
        (folder / f"{i:03d}.png").write_bytes((demo / f"{i:03d}.png").read_bytes())
        (folder / f"{i:03d}.txt").write_text((demo / f"{i:03d}.txt").read_text())
    twin = Image.open(demo / "000.png").convert("RGB").resize((160, 160))
    ImageEnhance.Brightness(twin).enhance(1.05).save(folder / "000_reencoded.jpg", quality=85)
    Image.open(demo / "006.png").convert("RGB").filter(ImageFilter.GaussianBlur(4)).save(folder / "blurred.png")
    Image.open(demo / "007.png").convert("RGB").resize((40, 40)).save(folder / "tiny.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


def config(raw: Path, out: Path, **overrides) -> CurateConfig:
    register_prep_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("curate", overrides=[f"input_dir={raw}", f"output_dir={out}", "min_side=128",
                                           *(f"{k}={v}" for k, v in overrides.items())])
    return to_schema(cfg, CurateConfig, "curate_schema")


def test_every_dropped_file_has_its_reason(raw, tmp_path) -> None:
    out = tmp_path / "kept"
    report = curate(config(raw, out))
    reasons = {d["file"]: d["reason"] for d in report["dropped"]}
    assert set(reasons) == {"000_reencoded.jpg", "blurred.png", "tiny.png", "broken.png"}
    assert reasons["000_reencoded.jpg"].startswith("near-duplicate of 000.png")
    assert reasons["blurred.png"].startswith("blurry")
    assert reasons["tiny.png"].startswith("too small: 40x40")
    assert reasons["broken.png"].startswith("unreadable")
    kept = sorted(p.name for p in (out / "images").glob("*.png"))
    assert kept == [f"{i:03d}.png" for i in range(6)]
    assert (out / "images" / "003.txt").read_text() == (raw / "003.txt").read_text()
    assert [e.path.name for e in scan_folder(out / "images", "aldar_kose_man", "error").examples] == kept
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["dropped"] == report["dropped"]
    markdown = (out / "report.md").read_text()
    assert "| blurred.png | blurry" in markdown and "## View / pose balance" in markdown
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (6 * 160, 1 * (160 + 14))  # six thumbnails in one row of up to 8
    assert not list(tmp_path.glob(".kept.*"))  # the staging folder is gone

    again = curate(config(raw, out, blur_threshold=0))  # a re-run replaces its own earlier output
    assert "blurred.png" in {v["file"] for v in again["kept"]}


def test_balance_report_counts_categories_from_captions(raw, tmp_path) -> None:
    report = curate(config(raw, tmp_path / "kept"))
    balance = report["balance"]
    categories = {v["file"]: v["category"] for v in report["kept"]}
    for category, row in balance["categories"].items():
        assert row["count"] == sum(c == category for c in categories.values())
    assert balance["captioned"] == 6 and balance["uncaptioned"] == 0
    assert balance["categories"]["front"]["reference"] == 25
    assert balance["categories"]["front"]["expected_for_this_size"] == pytest.approx(25 / 70 * 6, abs=0.05)
    keywords = config(raw, tmp_path / "x").balance_keywords
    assert balance_category("aldar_kose_man, side view facing left, walking", keywords) == "action"
    assert balance_category("aldar_kose_man, full body, side view facing left, standing", keywords) == "side"
    assert balance_category("aldar_kose_man, medium shot, front view, standing", keywords) == "front"
    assert balance_category("aldar_kose_man, three-quarter view, sitting", keywords) == "misc"


def test_face_filter_keeps_a_real_face_and_drops_a_faceless_render(tmp_path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(raw / "astronaut.png")
    Image.linear_gradient("L").convert("RGB").resize((512, 512)).save(raw / "gradient.png")
    report = curate(config(raw, tmp_path / "kept", require_face=True, blur_threshold=0))
    assert [v["file"] for v in report["kept"]] == ["astronaut.png"]
    assert report["kept"][0]["faces"] == 1
    assert report["dropped"] == [{"file": "gradient.png", "reason": "no face found (require_face=true)"}]


def test_perceptual_hash_separates_different_images_and_matches_resized_ones(raw) -> None:
    from aldar_lit.images import load_rgb

    a = perceptual_hash(greyscale(load_rgb(raw / "000.png"), 512))
    a_twin = perceptual_hash(greyscale(load_rgb(raw / "000_reencoded.jpg"), 512))
    b = perceptual_hash(greyscale(load_rgb(raw / "001.png"), 512))
    assert hamming(a, a_twin) <= 6 < hamming(a, b)


def test_bad_output_folders_are_refused(raw, tmp_path) -> None:
    with pytest.raises(ConfigError, match="output_dir"):
        curate(config(raw, raw / "inside"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="output_dir"):
        curate(config(raw, tmp_path / "busy"))
    assert (tmp_path / "busy" / "precious.txt").read_text() == "keep me"
    with pytest.raises(ConfigCompositionException, match="override link=teleport") as failure:  # an Enum field
        config(raw, tmp_path / "o", link="teleport")
    assert "expected one of [copy, hardlink, symlink]" in str(failure.value.__cause__)


def test_cli_writes_the_kept_set(raw, tmp_path) -> None:
    out = tmp_path / "kept"
    result = subprocess.run(
        [sys.executable, "-m", "aldar_lit.curate", f"input_dir={raw}", f"output_dir={out}", "min_side=128",
         "link=symlink", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    kept = out / "images" / "001.png"
    assert kept.is_symlink() and kept.resolve() == (raw / "001.png").resolve()
    assert "dropped blurred.png: blurry" in (tmp_path / "run" / "curate.log").read_text()
    closing = result.stdout.splitlines()[-5:]  # where the outputs are, and the next command as the user can paste it
    report = json.loads((out / "report.json").read_text())
    assert closing[0].endswith(f"kept {len(report['kept'])} of {report['images']} images in {out / 'images'}")
    assert closing[1:] == [f"  report:        {out / 'report.md'} (each dropped image and why)",
                           f"  contact sheet: {out / 'contact_sheet.png'}",
                           "next, caption them (images with a .txt caption keep it):",
                           f"  python -m aldar_lit.caption input_dir={out / 'images'}"]
