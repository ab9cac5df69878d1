"""Write files so that a reader (or a crash) sees the old content or the new, never half of either.

Every file and directory is written as a temporary sibling `.<name>.tmp-<hex>` in the same directory,
flushed to disk, then renamed over its final name. New files and directories honour the umask like
any other output. A write that fails removes its temporary and raises `WriteError` naming the file; a
temporary left by a killed process (older than this one) is removed the next time its target is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock
from PIL import Image
from PIL.PngImagePlugin import PngInfo

_STARTED = time.time()  # temporaries older than this belong to an earlier process


class WriteError(OSError):
    """A write that failed, naming the file and the reason; `errno` is the operating system's."""


def temporary_sibling(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")


def sweep_stale_temporaries(target: Path) -> None:
    """Remove temporaries of `target` (and only of it) left by an earlier, killed process."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.tmp-[0-9a-f]{{12}}")
    stale = []
    with contextlib.suppress(FileNotFoundError), os.scandir(target.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.stat(follow_symlinks=False).st_mtime < _STARTED:
                stale.append(Path(entry.path))
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# how Rust's I/O errors end, in the messages of Rust-backed writers such as safetensors ("... (os error 28)")
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextlib.contextmanager
def naming_the_file(path: Path) -> Iterator[None]:
    """Re-raise an OS error as a `WriteError` that says which file was being written and why."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(err.errno, f"{err.strerror or err} while writing {path}") from err
    except Exception as err:
        rust_os_error = _RUST_OS_ERROR.search(str(err))
        if rust_os_error is None:
            raise
        code = int(rust_os_error[1])
        raise WriteError(code, f"{os.strerror(code)} while writing {path}") from err


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a crash right after it cannot undo it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_for_replace(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write whose content replaces `path` once the block ends without an error."""
    path = Path(path)
    with naming_the_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(path)
        tmp = temporary_sibling(path)
        try:
            # os.open with 0o666, unlike tempfile, lets the umask decide who may read the file
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    with open_for_replace(path) as handle:
        handle.write(data)


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


def _publish_files(directory: Path) -> None:
    """fsync the files written into `directory` and give them the umask's mode, which `directory` got at
    creation: some writers (safetensors) leave 0600 files. Links to files elsewhere are left as they are."""
    mode = stat.S_IMODE(directory.stat().st_mode) & 0o666
    for path in directory.rglob("*"):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            os.chmod(path, mode)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


@contextlib.contextmanager
def replacing_dir(target: str | os.PathLike, replace_existing: bool = True) -> Iterator[Path]:
    """An empty directory to fill; once the block ends without an error it replaces `target` whole.

    A reader sees the old directory, the new one, or (for an instant between two renames) none. With
    `replace_existing=False` an existing non-empty `target` is kept instead and the rename raises
    (`WriteError`, errno ENOTEMPTY or EEXIST): for callers racing to build the same content.
    """
    target = Path(target)
    with naming_the_file(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(target)
        tmp = temporary_sibling(target)
        tmp.mkdir()  # unlike tempfile.mkdtemp this honours the umask (no private 0700 directory)
        try:
            yield tmp
            _publish_files(tmp)
            if replace_existing and target.exists():
                old = temporary_sibling(target)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_directory(target.parent)


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
        with replacing_dir(target) as tmp:  # replaces a leftover without the marker
            write(tmp)
            (tmp / COMPLETE_MARKER).touch()
    return target
