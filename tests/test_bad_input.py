"""Every kind of bad input file: skipped with its reason (default) or an error naming it; never a mid-epoch crash."""

from __future__ import annotations

import io
import re
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aldar_lit.config import ConfigError, DataConfig
from aldar_lit.data.dataset import CaptionedImageDataset, DataError, scan_folder
from aldar_lit.images import load_rgb

RED, BLUE, WHITE = (230, 20, 20), (20, 20, 230), (255, 255, 255)


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that claims `width` x `height` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


# name -> (file bytes, caption bytes or None, what the reason must say)
BAD_FILES = {
    "truncated.jpg": (truncated_jpeg(), b"aldar_kose_man", "unreadable image"),
    "empty.png": (b"", b"aldar_kose_man", "empty file (0 bytes)"),
    "notes.png": (b"these are my notes, not a picture", b"aldar_kose_man", "unreadable image (UnidentifiedImageError"),
    "dot.png": (None, b"aldar_kose_man", "1x1 image is below data.min_image_side=64"),
    "bomb.png": (png_header_only(100_000, 100_000), b"aldar_kose_man", "too large"),
    "latin1.png": (None, "aldar_kose_man, Köse".encode("cp1252"), "caption is not valid UTF-8"),
    "uncaptioned.png": (None, None, "no caption"),
}


def good_png(size=(96, 96), colour=RED) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def write(folder: Path, name: str, data: bytes | None, caption: bytes | None) -> Path:
    path = folder / name
    path.write_bytes(data if data is not None else (good_png((1, 1)) if name == "dot.png" else good_png()))
    if caption is not None:
        path.with_suffix(".txt").write_bytes(caption)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write(tmp_path, "good.png", None, b"aldar_kose_man, front view")
    return tmp_path


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_skipped_with_its_reason(folder, name) -> None:
    data, caption, reason = BAD_FILES[name]
    bad = write(folder, name, data, caption)
    report = scan_folder(folder, "aldar_kose_man", on_bad_file="skip", min_side=64)
    assert [e.path.name for e in report.examples] == ["good.png"]
    assert len(report.skipped) == 1 and report.skipped[0].path == bad
    assert reason in report.skipped[0].reason and str(bad.with_suffix("")) in report.skipped[0].reason


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_an_error_naming_it_under_the_error_policy(folder, name) -> None:
    data, caption, reason = BAD_FILES[name]
    bad = write(folder, name, data, caption)
    with pytest.raises(DataError, match=re.escape(reason)) as caught:
        scan_folder(folder, "aldar_kose_man", on_bad_file="error", min_side=64)
    assert str(bad.with_suffix("")) in str(caught.value)  # the image, or its caption file


def test_skipped_files_are_summarised_at_start(folder, caplog) -> None:
    for name in ("empty.png", "uncaptioned.png"):
        write(folder, name, *BAD_FILES[name][:2])
    with caplog.at_level(logging.WARNING):
        scan_folder(folder, "aldar_kose_man", on_bad_file="skip", min_side=64).log_summary()
    summary = caplog.records[-1].getMessage()
    assert summary.startswith("skipped 2 of 3 image files")
    assert "empty.png: empty file" in summary and "uncaptioned.png: no caption" in summary


def test_a_configured_pixel_limit_refuses_large_images(folder) -> None:
    write(folder, "large.png", good_png((200, 200)), b"aldar_kose_man")
    report = scan_folder(folder, "aldar_kose_man", on_bad_file="skip", min_side=1, max_pixels=100 * 100)
    assert [e.path.name for e in report.examples] == ["good.png"]
    assert "large.png: 200x200 image exceeds data.max_image_pixels=10000" in report.skipped[0].reason


def test_utf16_caption_with_bom_is_read(folder) -> None:
    write(folder, "windows.png", None, "aldar_kose_man, Köse's hat".encode("utf-16"))
    report = scan_folder(folder, "aldar_kose_man", on_bad_file="error", min_side=64)
    assert report.examples[1].caption == "aldar_kose_man, Köse's hat"


def test_cmyk_jpeg_decodes_to_the_right_colour(tmp_path) -> None:
    Image.new("RGB", (64, 64), RED).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    pixels = np.asarray(load_rgb(tmp_path / "cmyk.jpg")).astype(int)
    assert np.abs(pixels - RED).max() <= 12


def test_alpha_and_palette_transparency_composite_on_white(tmp_path) -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((*BLUE, 255), (32, 0, 64, 64))
    rgba.save(tmp_path / "rgba.png")
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    palette.paste(1, (32, 0, 64, 64))
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.new("LA", (64, 64), (0, 0)).save(tmp_path / "grey_alpha.png")
    for name in ("rgba.png", "palette.png"):
        image = load_rgb(tmp_path / name)
        assert image.mode == "RGB"
        assert image.getpixel((5, 5)) == WHITE and image.getpixel((60, 5)) == BLUE, name
    assert load_rgb(tmp_path / "grey_alpha.png").getpixel((0, 0)) == WHITE


def test_exif_rotated_jpeg_is_turned_upright(tmp_path) -> None:
    stored = Image.new("RGB", (128, 64), RED)  # as the camera stored it: red left half, blue right half
    stored.paste(BLUE, (64, 0, 128, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    (tmp_path / "rotated.txt").write_text("aldar_kose_man, portrait")

    upright = load_rgb(tmp_path / "rotated.jpg")
    assert upright.size == (64, 128)
    assert np.abs(np.asarray(upright.getpixel((32, 20))) - RED).max() < 30  # the left half is now on top
    assert np.abs(np.asarray(upright.getpixel((32, 108))) - BLUE).max() < 30
    [example] = scan_folder(tmp_path, "aldar_kose_man", min_side=64).examples
    assert example.size == (128, 64)
    item = CaptionedImageDataset([example], resolution=64, buckets=[(64, 64)])[0]
    assert item["original_size"].tolist() == [128, 64] and item["crop_top_left"].tolist() == [32, 0]


def test_a_file_broken_after_the_scan_is_replaced_not_fatal(tmp_path, caplog) -> None:
    for i, colour in enumerate((RED, BLUE, WHITE)):
        write(tmp_path, f"{i}.png", good_png(colour=colour), b"aldar_kose_man")
    examples = scan_folder(tmp_path, "aldar_kose_man", min_side=64).examples
    (tmp_path / "1.png").write_bytes(b"")  # broken mid-run
    dataset = CaptionedImageDataset(examples, resolution=64, buckets=[(64, 64)], on_bad_file="skip")
    with caplog.at_level(logging.WARNING):
        items = [dataset[i] for i in range(3)]
    assert items[1]["pixel_values"][:, 0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0])  # 2.png stands in
    assert "1.png: empty file" in caplog.text and "using 2.png instead" in caplog.text
    strict = CaptionedImageDataset(examples, resolution=64, buckets=[(64, 64)], on_bad_file="error")
    with pytest.raises(DataError, match="1.png"):
        strict[1]


def test_policy_and_limits_are_validated_in_config() -> None:
    with pytest.raises(ConfigError, match="data.on_bad_file"):
        DataConfig(root="x", on_bad_file="ignore")
    with pytest.raises(ConfigError, match="data.min_image_side"):
        DataConfig(root="x", min_image_side=0)
    with pytest.raises(ConfigError, match="data.cache_latents"):
        DataConfig(root="x", cache_latents=True, cache_dir="/tmp/c", crop="random")
    with pytest.raises(ConfigError, match="data.cache_dir"):
        DataConfig(root="x", cache_latents=True)
