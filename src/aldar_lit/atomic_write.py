"""Write files so that a reader (or a crash) sees the old content or the new, never half of either."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary sibling, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes files private
    os.replace(tmp.name, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """PNG-encode `image`, with `text` as tEXt chunks (read back through `Image.text`)."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(path: str | os.PathLike, image: Image.Image, text: dict[str, str] | None = None) -> None:
    write_bytes(path, png_bytes(image, text))
