"""Reading one image or caption file safely: every way a file can be bad becomes a `DataError`.

Images are decoded upright (EXIF orientation applied) in RGB; transparency (RGBA, LA, palette
PNGs with a transparent index) is composited onto white, the usual background of character
renders, rather than dropped to whatever colour the transparent pixels happen to hold.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ALPHA_BACKGROUND = (255, 255, 255)
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit (it refuses twice this when opening)


class DataError(ValueError):
    """A data problem; the message names the file or config key."""


def list_image_files(folder: Path) -> list[Path]:
    """Every file with an image suffix under `folder`, sorted; `DataError` if the folder is missing."""
    if not folder.is_dir():
        raise DataError(f"{folder}: directory does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels of a decoded image: EXIF-rotated upright, alpha composited on white, CMYK converted."""
    image = ImageOps.exif_transpose(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open and fully decode `path`; raise `DataError` with the reason if that cannot be done safely.

    The pixel count is checked from the header before decoding, so a decompression bomb is refused
    without allocating it.
    """
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            image = Image.open(path)
            width, height = image.size
            if width * height > max_pixels:
                image.close()
                raise DataError(f"{path}: {width}x{height} image exceeds data.max_image_pixels={max_pixels}")
            image.load()
            return image
    except DataError:
        raise
    except Image.DecompressionBombError as err:  # over twice PIL's limit: refused while opening
        raise DataError(f"{path}: image too large ({err})") from err
    except Exception as err:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def load_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image upright in RGB; `DataError` naming the file if it is broken or too large."""
    with open_checked(Path(path), max_pixels) as image:
        return to_rgb(image)


def read_caption(path: Path) -> str:
    """A caption file's text: UTF-8 (a BOM is dropped) or UTF-16 with a BOM, as Windows editors write.

    Anything else is refused rather than guessed, since a wrong guess silently trains on mojibake.
    """
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: caption is not valid UTF-8 ({err}); re-save it as UTF-8") from err
