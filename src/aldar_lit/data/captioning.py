"""Caption a folder of images with a GPT-4o-class vision model through the official `openai` client.

Captions go to sidecar `.txt` files beside the images. Every answer is cached under a key of the
image's bytes, the model and the request settings, so a re-run makes no API calls. Retries with
exponential backoff on 429, 5xx, connection errors and timeouts are the client's own (`max_retries`,
`timeout`); requests run on a bounded thread pool. The API key is read from OPENAI_API_KEY and handed
to the client only: it is never logged or written.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import re
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import openai
from PIL import Image

from aldar_lit.atomic_write import write_text
from aldar_lit.config import ConfigError, to_schema
from aldar_lit.data.dataset import with_trigger
from aldar_lit.images import DataError, list_image_files, load_rgb
from aldar_lit.config.prep import CaptionConfig
from aldar_lit.redaction import scrub
from aldar_lit.tool_command import tool_command

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
CACHE_FORMAT = 1
# How chat models open a refusal written as the answer itself (not in the API's `refusal` field).
REFUSAL = re.compile(r"^\W*(?:i(?:'|’)?m sorry|sorry\b|i(?: am|'m|’m) (?:unable|not able)|i (?:can(?:'|’)?t|cannot|"
                     r"won(?:'|’)?t) (?:help|assist|describe|caption|provide|do)|as an ai\b)", re.IGNORECASE)


def image_tokens(width: int, height: int, detail: str) -> int:
    """Input tokens OpenAI bills for one image (its documented GPT-4o tiling rule; `auto` counted as high)."""
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return 85 + 170 * tiles


def openai_client(api_key: str, base_url: str | None, max_retries: int, timeout_s: float,
                  on_request: Callable[[Any], None]) -> openai.OpenAI:
    """The `openai` client every vision call uses: the client's own retries with backoff (429, 5xx, connection
    errors, timeouts) and `on_request` called for each HTTP request, retries included."""
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [on_request]})
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s,
                         http_client=http_client)


def jpeg_payload(image: Image.Image, max_side: int) -> tuple[bytes, tuple[int, int]]:
    """The JPEG sent to the model (downscaled to `max_side`) and its (width, height)."""
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), image.size


def jpeg_data_url(payload: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(payload).decode("ascii")


@dataclass
class CaptionJob:
    image: Path
    sidecar: Path
    key: str
    payload: bytes  # the (downscaled) JPEG sent to the model
    size: tuple[int, int]  # (width, height) of the payload


@dataclass
class CaptionReport:
    model: str
    base_url: str | None
    input_dir: str
    dry_run: bool
    images: int = 0
    captioned: list[str] = field(default_factory=list)
    from_cache: list[str] = field(default_factory=list)
    kept_existing: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    api_requests: int = 0  # HTTP requests made, retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost_usd: float = 0.0
    would_caption: list[str] = field(default_factory=list)  # dry run only

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "failed": len(self.failures)}


class Captioner:
    """Captions jobs one API call each; thread-safe counters of requests and tokens."""

    def __init__(self, cfg: CaptionConfig, api_key: str):
        self.cfg = cfg
        self.prompt = cfg.prompt.format(trigger=cfg.trigger)
        self._lock = threading.Lock()
        self.requests = self.prompt_tokens = self.completion_tokens = 0
        self.client = openai_client(api_key, cfg.base_url, cfg.max_retries, cfg.timeout_s, self._count_request)

    def _count_request(self, request: Any) -> None:
        with self._lock:
            self.requests += 1

    def caption(self, job: CaptionJob) -> str:
        image_url = jpeg_data_url(job.payload)
        response = self.client.chat.completions.create(
            model=self.cfg.vision_model,
            max_tokens=self.cfg.max_tokens,
            temperature=self.cfg.temperature,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": self.prompt},
                {"type": "image_url", "image_url": {"url": image_url, "detail": self.cfg.image_detail}},
            ]}],
        )
        usage = getattr(response, "usage", None)
        with self._lock:
            self.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
            self.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
        return clean_caption(response, self.cfg)


class RejectedCaption(ValueError):
    """A reply that is no usable caption: malformed, empty, cut off, too long or a refusal."""


def reply_text(response: Any, max_tokens: int, rejected: type[ValueError] = RejectedCaption,
               what: str = "caption") -> str:
    """The text of a chat completion's first choice; `rejected` saying why there is none (malformed, refused in the
    API's `refusal` field, cut off at `max_tokens`, empty)."""
    try:
        choice = response.choices[0]
        message = choice.message
        text = message.content
    except (AttributeError, IndexError, TypeError) as err:
        raise rejected(f"malformed response: no choices[0].message.content ({type(err).__name__})") from err
    if getattr(message, "refusal", None):
        raise rejected(f"the model refused: {message.refusal}")
    if getattr(choice, "finish_reason", None) == "length":
        raise rejected(f"cut off at max_tokens={max_tokens} (finish_reason 'length')")
    if not isinstance(text, str) or not text.strip():
        raise rejected(f"empty or non-text {what} ({text!r:.80})")
    return text


def clean_caption(response: Any, cfg: CaptionConfig) -> str:
    """The caption text of a chat-completion response, trigger first; `RejectedCaption` saying why there is none."""
    text = reply_text(response, cfg.max_tokens).strip().strip('"')
    if REFUSAL.search(text):
        raise RejectedCaption(f"the model refused: {text!r:.120}")
    if len(text) > cfg.max_caption_chars:
        raise RejectedCaption(f"{len(text)} characters, over max_caption_chars={cfg.max_caption_chars}")
    return with_trigger(text, cfg.trigger)


class CaptionCache:
    """One JSON file per (image bytes, model, request settings) key."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))["caption"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, caption: str, model: str) -> None:
        write_text(self.path(key), json.dumps({"caption": caption, "model": model}))


def job_key(image_bytes: bytes, cfg: CaptionConfig, prompt: str) -> str:
    settings = json.dumps([CACHE_FORMAT, cfg.vision_model, prompt, cfg.image_detail, cfg.max_image_side,
                           cfg.max_tokens, cfg.temperature])
    return hashlib.sha256(hashlib.sha256(image_bytes).digest() + settings.encode()).hexdigest()


def make_job(path: Path, cfg: CaptionConfig, prompt: str) -> CaptionJob:
    payload, size = jpeg_payload(load_rgb(path), cfg.max_image_side)
    return CaptionJob(path, path.with_suffix(".txt"), job_key(path.read_bytes(), cfg, prompt), payload, size)


def caption_folder(cfg: CaptionConfig, api_key: str | None) -> CaptionReport:
    """Caption every image of `cfg.input_dir` that lacks a caption (or all, with `overwrite`); return the report."""
    input_dir = Path(cfg.input_dir).expanduser()
    if not input_dir.is_dir():
        raise ConfigError(f"input_dir: directory {input_dir} does not exist")
    images = list_image_files(input_dir)
    if not cfg.dry_run and not api_key:
        raise ConfigError(f"{API_KEY_ENV}: not set; export it (it is read from the environment only)")
    report = CaptionReport(cfg.vision_model, cfg.base_url, str(input_dir), cfg.dry_run, images=len(images))
    cache = CaptionCache(Path(cfg.cache_dir).expanduser())
    prompt = cfg.prompt.format(trigger=cfg.trigger)
    pending: list[CaptionJob] = []
    for path in images:
        name = path.relative_to(input_dir).as_posix()
        if path.with_suffix(".txt").exists() and not cfg.overwrite:
            report.kept_existing.append(name)
            continue
        try:
            job = make_job(path, cfg, prompt)
        except DataError as err:
            report.failures.append({"file": name, "error": str(err)})
            continue
        cached = cache.get(job.key)
        if cached is not None:
            if not cfg.dry_run:
                write_text(job.sidecar, cached + "\n")
            report.from_cache.append(name)
        else:
            pending.append(job)

    if cfg.dry_run:
        report.would_caption = [job.image.relative_to(input_dir).as_posix() for job in pending]
        text_tokens = len(prompt) // 4 + 10
        report.prompt_tokens = sum(image_tokens(*job.size, cfg.image_detail) + text_tokens for job in pending)
        report.completion_tokens = cfg.expected_output_tokens * len(pending)
    elif pending:
        captioner = Captioner(cfg, api_key)

        def run(job: CaptionJob) -> tuple[CaptionJob, str | None, str | None]:
            try:
                return job, captioner.caption(job), None
            except (openai.OpenAIError, ValueError) as err:  # a server's error body may echo the key
                return job, None, scrub(f"{type(err).__name__}: {err}", [api_key])

        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            for job, caption, error in pool.map(run, pending):
                name = job.image.relative_to(input_dir).as_posix()
                if caption is None:
                    report.failures.append({"file": name, "error": error})
                    log.warning("%s: caption failed (%s)", name, error)
                    continue
                cache.put(job.key, caption, cfg.vision_model)
                write_text(job.sidecar, caption + "\n")
                report.captioned.append(name)
        report.api_requests = captioner.requests
        report.prompt_tokens, report.completion_tokens = captioner.prompt_tokens, captioner.completion_tokens
    report.estimated_cost_usd = round(report.prompt_tokens * cfg.usd_per_million_input_tokens / 1e6
                                      + report.completion_tokens * cfg.usd_per_million_output_tokens / 1e6, 6)
    return report


def write_report(report: CaptionReport, path: Path) -> None:
    write_text(path, json.dumps(report.as_dict(), indent=2) + "\n")


def run_captioning(cfg: Any) -> CaptionReport:
    """`python -m aldar_lit.caption`'s body: validate, caption, write and log the report."""
    config = to_schema(cfg, CaptionConfig, "caption_schema")
    report = caption_folder(config, os.environ.get(API_KEY_ENV))
    report_path = Path(config.report_path or Path(config.input_dir).expanduser() / "caption_report.json")
    write_report(report, report_path)
    if config.dry_run:
        log.info("dry run: %d images to caption (%d from cache, %d with captions kept); estimated %d input + %d "
                 "output tokens, about $%.4f", len(report.would_caption), len(report.from_cache),
                 len(report.kept_existing), report.prompt_tokens, report.completion_tokens, report.estimated_cost_usd)
        for name in report.would_caption:
            log.info("  would caption %s", name)
    else:
        log.info("captioned %d, from cache %d, kept existing %d, failed %d; %d API requests, %d+%d tokens, "
                 "about $%.4f", len(report.captioned), len(report.from_cache), len(report.kept_existing),
                 len(report.failures), report.api_requests, report.prompt_tokens, report.completion_tokens,
                 report.estimated_cost_usd)
    log.info(closing_summary(report, report_path, Path(config.input_dir).expanduser()))
    return report


def closing_summary(report: CaptionReport, report_path: Path, input_dir: Path) -> str:
    """caption's last lines: where the captions and the report are, and the next command: captioning for real after
    a dry run, training once every image has its caption."""
    if report.dry_run:
        return "\n".join([f"dry run of {input_dir}: nothing captioned", f"  report: {report_path}",
                          "next, caption them: the same command without dry_run=true"])
    lines = [f"captions are beside the images in {input_dir} ({len(report.failures)} failed)",
             f"  report: {report_path}"]
    if report.failures:
        return "\n".join([*lines, "next, fix or remove the failed images (the report says why), then run again: "
                                   "captioned images are not asked again"])
    train = shlex.join([*tool_command("train"), "experiment=aldar_kose", f"data.root={input_dir}"])
    return "\n".join([*lines, "next, train on them:", f"  {train}"])
