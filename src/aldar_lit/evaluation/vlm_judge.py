"""Prompt alignment judged by a vision-language model, after ViStoryBench (Zhuang et al., CVPR 2026;
github.com/ViStoryBench/vistorybench, bench/prompt_align/: one request per image and aspect, the answer ends in
"Score: <0-4>", the 0-4 Likert score is reported x 25 on a 0-100 scale).

Aspects: `scene` (setting and objects), `character_action` (what the character does, pose, expression) and `camera`
(shot size and angle). The frame's prompt is the description for each; an aspect the prompt leaves open is judged
on plausibility (see RUBRICS), so read `vlm_camera` on prompts that name a shot.

The client, its retries (429, 5xx, timeouts: the openai client's own backoff, `max_retries`), the image upload and
the key handling are captioning's (aldar_lit.data.captioning). The key comes from OPENAI_API_KEY only and is never
logged or written; without it the judge is skipped with one log line and a note in the report. Every answer is
cached under a hash of the image's pixels, the request text and the model, with its token counts and cost. An
answer without a "Score:" line, with a non-integer score or one outside 0-4 is a failure with its reason: never
scored, never cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import openai
from PIL import Image

from aldar_lit.atomic_write import write_text
from aldar_lit.data.captioning import API_KEY_ENV, jpeg_data_url, jpeg_payload, openai_client, reply_text
from aldar_lit.config.evaluate import VlmJudgeConfig
from aldar_lit.redaction import scrub

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
POINTS_PER_STEP = 25  # ViStoryBench: 0-4 x 25 = 0-100
MAX_SCORE = 4
SCALE = ("Score from 0 to 4:\n"
         "0 (very poor): nothing of it matches the description.\n"
         "1 (poor): a loose match; most details are missing or wrong.\n"
         "2 (fair): a partial match; several important details are missing or wrong.\n"
         "3 (good): matches, with minor omissions or inaccuracies.\n"
         "4 (excellent): matches fully.\n"
         "If the description does not say anything about this aspect, give 4 unless the image contradicts the rest "
         "of the description.\n\n"
         "Answer in exactly this format:\nAnalysis: <one or two sentences>\nScore: <an integer from 0 to 4>")
RUBRICS = {
    "scene": "You judge a generated storyboard frame against its text description. Judge only the background, "
             "setting, objects, lighting and mood (not the characters): are those the description names present "
             "and correct, with nothing that contradicts it?",
    "character_action": "You judge a generated storyboard frame against its text description. Judge only the main "
                        "character's action, pose, gesture and expression: does the character do what the "
                        "description says, completely and accurately?",
    "camera": "You judge a generated storyboard frame against its text description. Judge only the shot: shot size "
              "(extreme close-up: the face; close-up: chest up; medium shot: waist up; full shot: the whole body; "
              "long shot: the figure small in its surroundings) and camera angle (eye level, low angle, high angle, "
              "bird's eye, side or back view): does the frame use the shot the description asks for?",
}
SCORE_LINE = re.compile(r"^[\s*#_]*score[\s*_]*:[\s*_]*(.*?)[\s*_.]*$", re.IGNORECASE | re.MULTILINE)


class RejectedJudgement(ValueError):
    """An answer that gives no usable score: malformed, no score line, not an integer, outside 0-4, cut off."""


class SpentRejection(RejectedJudgement):
    """A rejected answer that was paid for: `entry` holds its tokens and cost."""

    def __init__(self, message: str, entry: dict[str, Any]):
        super().__init__(message)
        self.entry = entry


def parse_score(text: str) -> int:
    """The integer of the answer's last "Score:" line, on ViStoryBench's 0-4 scale."""
    found = SCORE_LINE.findall(text)
    if not found:
        raise RejectedJudgement(f"malformed answer: no 'Score: <0-4>' line ({text!r:.120})")
    raw = found[-1].strip()
    if not re.fullmatch(r"[+-]?\d+", raw):
        raise RejectedJudgement(f"malformed score {raw!r:.40}: not an integer from 0 to {MAX_SCORE}")
    score = int(raw)
    if not 0 <= score <= MAX_SCORE:
        raise RejectedJudgement(f"score {score} is outside the 0-{MAX_SCORE} scale")
    return score


@dataclass(frozen=True)
class JudgeItem:
    """One frame to judge; `key` is the caller's name for it (e.g. (mode, story, seed, frame))."""

    key: Hashable
    image: Image.Image
    prompt: str


@dataclass
class JudgeReport:
    model: str
    base_url: Optional[str]
    skipped: Optional[str] = None  # why nothing was judged
    judged: int = 0  # answered by the API in this run
    from_cache: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    api_requests: int = 0  # HTTP requests, retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_cost_usd: float = 0.0  # this run's requests
    cached_cost_usd: float = 0.0  # what the cached answers cost when they were made

    def summary(self) -> str:
        if self.skipped:
            return f"VLM judge ({self.model}) skipped: {self.skipped}"
        return (f"VLM judge ({self.model}): {self.judged} answers from the API and {self.from_cache} from the cache, "
                f"{len(self.failures)} failures (never scored, listed in vlm_judge.json); {self.api_requests} API "
                f"requests, {self.prompt_tokens}+{self.completion_tokens} tokens, about ${self.estimated_cost_usd:.4f} "
                f"(cached answers cost ${self.cached_cost_usd:.4f} when made)")

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "failed": len(self.failures)}


def request_text(aspect: str, prompt: str) -> str:
    return f"{RUBRICS[aspect]}\n\n{SCALE}\n\nDescription: {prompt}"


def cache_key(image: Image.Image, text: str, cfg: VlmJudgeConfig) -> str:
    pixels = hashlib.sha256(image.convert("RGB").tobytes() + repr(image.size).encode()).digest()
    settings = json.dumps([CACHE_FORMAT, cfg.vision_model, text, cfg.image_detail, cfg.max_image_side, cfg.max_tokens,
                           cfg.temperature])
    return hashlib.sha256(pixels + settings.encode()).hexdigest()


class JudgeCache:
    """One JSON file per (image pixels, request text, model and settings) key: the score, its tokens and cost."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[dict[str, Any]]:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
            parse_score(f"Score: {entry['score']}")
            return entry
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_text(self.path(key), json.dumps(entry))


class Judge:
    """One chat-completion request per (frame, aspect), with thread-safe request and token counters."""

    def __init__(self, cfg: VlmJudgeConfig, api_key: str):
        self.cfg = cfg
        self._lock = threading.Lock()
        self.requests = 0
        self.client = openai_client(api_key, cfg.base_url, cfg.max_retries, cfg.timeout_s, self._count_request)

    def _count_request(self, request: Any) -> None:
        with self._lock:
            self.requests += 1

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round(prompt_tokens * self.cfg.usd_per_million_input_tokens / 1e6
                     + completion_tokens * self.cfg.usd_per_million_output_tokens / 1e6, 6)

    def ask(self, image: Image.Image, text: str) -> dict[str, Any]:
        payload, _ = jpeg_payload(image, self.cfg.max_image_side)
        response = self.client.chat.completions.create(
            model=self.cfg.vision_model, max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": jpeg_data_url(payload), "detail": self.cfg.image_detail}},
            ]}])
        usage = getattr(response, "usage", None)
        tokens = (int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0))
        answer = reply_text(response, self.cfg.max_tokens, RejectedJudgement, "answer")
        entry = {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "usd": self.cost(*tokens),
                 "model": self.cfg.vision_model, "answer": answer}
        try:
            return {**entry, "score": parse_score(answer)}
        except RejectedJudgement as err:  # the tokens were spent: count them with the failure
            raise SpentRejection(str(err), entry) from err


def judge(items: Sequence[JudgeItem], cfg: VlmJudgeConfig,
          api_key: Optional[str]) -> tuple[dict[tuple[Hashable, str], Optional[float]], JudgeReport]:
    """Scores 0-100 per (item key, aspect) (None for a failure) and the report; nothing when skipped."""
    report = JudgeReport(cfg.vision_model, cfg.base_url)
    if not cfg.enabled:
        report.skipped = "vlm_judge.enabled=false"
        log.info("prompt alignment by a VLM: off (vlm_judge.enabled=false)")
        return {}, report
    if not api_key:
        report.skipped = (f"{API_KEY_ENV} is not set (export it to judge prompt alignment with {cfg.vision_model}; "
                          "vlm_judge.enabled=false turns the judge off)")
        log.warning("prompt alignment by a VLM skipped: %s", report.skipped)
        return {}, report
    cache = JudgeCache(Path(cfg.cache_dir).expanduser())
    scores: dict[tuple[Hashable, str], Optional[float]] = {}
    pending = []
    for item in items:
        for aspect in cfg.aspects:
            text = request_text(aspect, item.prompt)
            key = cache_key(item.image, text, cfg)
            cached = cache.get(key)
            if cached is not None:
                scores[(item.key, aspect)] = float(cached["score"] * POINTS_PER_STEP)
                report.from_cache += 1
                report.cached_cost_usd += float(cached.get("usd", 0.0))
            else:
                pending.append((item, aspect, text, key))
    if pending:
        client = Judge(cfg, api_key)

        def run(job):
            item, aspect, text, key = job
            try:
                return job, client.ask(item.image, text), None, None
            except SpentRejection as err:
                return job, None, err.entry, scrub(f"{type(err).__name__}: {err}", [api_key])
            except (openai.OpenAIError, ValueError) as err:  # a server's error body may echo the key
                return job, None, None, scrub(f"{type(err).__name__}: {err}", [api_key])

        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            for (item, aspect, _, key), entry, spent, error in pool.map(run, pending):
                for used in (entry, spent):
                    if used is not None:
                        report.prompt_tokens += used["prompt_tokens"]
                        report.completion_tokens += used["completion_tokens"]
                if entry is None:
                    scores[(item.key, aspect)] = None
                    report.failures.append({"item": str(item.key), "aspect": aspect, "error": error})
                    log.warning("VLM judge, %s %s: failed (%s)", item.key, aspect, error)
                    continue
                cache.put(key, entry)
                scores[(item.key, aspect)] = float(entry["score"] * POINTS_PER_STEP)
                report.judged += 1
        report.api_requests = client.requests
        report.estimated_cost_usd = client.cost(report.prompt_tokens, report.completion_tokens)
    report.cached_cost_usd = round(report.cached_cost_usd, 6)
    log.info("%s", report.summary())
    return scores, report
