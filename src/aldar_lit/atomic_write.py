"""Write files so that a reader (or a crash) sees the old content or the new, never half of either."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
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


COMPLETE_MARKER = ".complete"


def build_dir_once(target: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Build the directory `target` with `write(tmp_dir)` unless it is already complete.

    A file lock serialises concurrent callers (Hydra multirun jobs, DDP ranks) and the directory is
    built in a temporary sibling and renamed into place, so it is built once and never seen half-made.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / COMPLETE_MARKER).is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            write(tmp)
            (tmp / COMPLETE_MARKER).touch()
            if target.exists():  # a leftover without the marker
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
