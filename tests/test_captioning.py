"""Captioning through the real `openai` client against an OpenAI-compatible server run by the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from aldar_lit.config import ConfigError
from aldar_lit.data.captioning import caption_folder, image_tokens
from aldar_lit.config import to_schema
from aldar_lit.config.prep import CaptionConfig, register_prep_configs
from aldar_lit.redaction import scrub
from fixtures_openai import colour_of_request, completion, describe, serve  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-8f3a9c"
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "renders"
    folder.mkdir()
    for name, rgb in COLOURS.items():
        Image.new("RGB", (96, 80), rgb).save(folder / f"{name}.png")
    return folder


def config(images: Path, base_url: str, **overrides) -> CaptionConfig:
    register_prep_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("caption", overrides=[f"input_dir={images}", f"base_url={base_url}",
                                            f"cache_dir={images.parent / 'cache'}", "max_retries=2",
                                            *(f"{k}={v}" for k, v in overrides.items())])
    return to_schema(cfg, CaptionConfig, "caption_schema")


def test_captions_are_written_beside_each_image_from_its_own_pixels(images, serve) -> None:
    server = serve()
    report = caption_folder(config(images, server.base_url), api_key=SECRET)
    assert sorted(report.captioned) == ["blue.png", "green.png", "red.png"] and not report.failures
    for colour in COLOURS:
        caption = (images / f"{colour}.txt").read_text(encoding="utf-8")
        assert caption.startswith("aldar_kose_man in a medium shot")
        assert f"plain {colour} background" in caption
    assert report.api_requests == 3
    assert (report.prompt_tokens, report.completion_tokens) == (360, 120)
    assert report.estimated_cost_usd == pytest.approx(360 * 2.5e-6 + 120 * 10e-6)
    sent = server.requests[0]
    assert sent["model"] == "gpt-4o"
    assert sent["messages"][0]["content"][0]["text"].startswith("You caption training images")
    assert "aldar_kose_man" in sent["messages"][0]["content"][0]["text"]
    assert server.auth_headers[0] == f"Bearer {SECRET}"


def test_a_429_is_retried_by_the_client_with_backoff(images, serve) -> None:
    def rate_limited_first(body, n):
        if n == 0:
            return 429, {"retry-after-ms": "20"}, json.dumps({"error": {"message": "slow down"}}).encode()
        return describe(body)

    server = serve(rate_limited_first)
    report = caption_folder(config(images, server.base_url, concurrency=1), api_key=SECRET)
    assert len(report.captioned) == 3 and not report.failures
    assert report.api_requests == 4 == len(server.requests)  # 3 images + 1 retry


def test_a_malformed_answer_fails_that_image_only(images, serve) -> None:
    def malformed_for_green(body, n):
        if colour_of_request(body) == "green":
            return 200, {}, b'{"choices": []}' if n % 2 else b"not json"
        return describe(body)

    server = serve(malformed_for_green)
    report = caption_folder(config(images, server.base_url), api_key=SECRET)
    assert sorted(report.captioned) == ["blue.png", "red.png"]
    assert [f["file"] for f in report.failures] == ["green.png"]
    assert not (images / "green.txt").exists()


def test_a_timeout_is_retried_then_reported_as_a_failure(images, serve) -> None:
    for path in list(images.iterdir())[1:]:
        path.unlink()
    server = serve(lambda body, n: (0, {}, b""))
    report = caption_folder(config(images, server.base_url, timeout_s=0.3, max_retries=1), api_key=SECRET)
    assert report.captioned == [] and len(report.failures) == 1
    assert "Timeout" in report.failures[0]["error"]
    assert len(server.requests) == 2 == report.api_requests  # the first try and one retry


def test_a_rerun_makes_no_api_calls_and_human_captions_are_kept(images, serve) -> None:
    server = serve()
    cfg = config(images, server.base_url)
    caption_folder(cfg, api_key=SECRET)
    first = {c: (images / f"{c}.txt").read_text() for c in COLOURS}
    (images / "red.txt").write_text("aldar_kose_man, hand-edited caption", encoding="utf-8")
    (images / "green.txt").unlink()

    again = caption_folder(cfg, api_key=SECRET)
    assert again.api_requests == 0 and len(server.requests) == 3
    assert again.from_cache == ["green.png"] and again.kept_existing == ["blue.png", "red.png"]
    assert (images / "green.txt").read_text() == first["green"]
    assert (images / "red.txt").read_text() == "aldar_kose_man, hand-edited caption"

    overwritten = caption_folder(config(images, server.base_url, overwrite=True), api_key=SECRET)
    assert overwritten.api_requests == 0 and len(overwritten.from_cache) == 3
    assert (images / "red.txt").read_text() == first["red"]

    other_model = caption_folder(config(images, server.base_url, overwrite=True, vision_model="gpt-4o-mini"),
                                 api_key=SECRET)
    assert other_model.api_requests == 3  # the model is part of the cache key


def test_dry_run_lists_work_and_cost_without_calling(images, serve) -> None:
    server = serve()
    (images / "blue.txt").write_text("aldar_kose_man, existing", encoding="utf-8")
    report = caption_folder(config(images, server.base_url, dry_run=True), api_key=None)
    assert report.would_caption == ["green.png", "red.png"] and report.kept_existing == ["blue.png"]
    assert server.requests == [] and not (images / "red.txt").exists()
    assert report.prompt_tokens > 2 * 85 and report.completion_tokens == 2 * 90
    assert report.estimated_cost_usd > 0


def test_image_token_rule_matches_openai_examples() -> None:
    assert image_tokens(1024, 1024, "high") == 765  # OpenAI's documented example
    assert image_tokens(2048, 4096, "high") == 1105
    assert image_tokens(4000, 3000, "low") == 85


def test_missing_key_and_bad_values_fail_before_any_call(images, serve) -> None:
    server = serve()
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        caption_folder(config(images, server.base_url), api_key=None)
    with pytest.raises(ConfigError, match="concurrency"):
        config(images, server.base_url, concurrency=0)
    assert server.requests == []


BAD_REPLIES = {  # reply to the green image -> what its failure must say
    "empty": (completion("  "), "empty or non-text caption"),
    "cut_off": (completion("aldar_kose_man in a medium shot, front view, standing in", "length"),
                "cut off at max_tokens=200 (finish_reason 'length')"),
    "too_long": (completion("aldar_kose_man " + "in a blue robe " * 700), "over max_caption_chars=1000"),
    "refusal": (completion("I can't help with that."), "the model refused: \"I can't help with that.\""),
    "polite_refusal": (completion("I’m sorry, but I can’t describe this image."), "the model refused"),
}


@pytest.mark.parametrize("kind", sorted(BAD_REPLIES))
def test_a_bad_reply_is_a_failure_with_its_reason_and_nothing_is_written_or_cached(images, serve, kind) -> None:
    reply, reason = BAD_REPLIES[kind]

    def bad_for_green(body, n):
        return (200, {}, json.dumps(reply).encode()) if colour_of_request(body) == "green" else describe(body)

    report = caption_folder(config(images, serve(bad_for_green).base_url), api_key=SECRET)
    assert sorted(report.captioned) == ["blue.png", "red.png"]
    assert [f["file"] for f in report.failures] == ["green.png"]
    assert report.failures[0]["error"].startswith("RejectedCaption: ") and reason in report.failures[0]["error"]
    assert not (images / "green.txt").exists()
    assert len(list((images.parent / "cache").rglob("*.json"))) == 2  # red and blue only

    again = caption_folder(config(images, serve().base_url), api_key=SECRET)  # a good server now: green is asked
    assert again.captioned == ["green.png"] and again.api_requests == 1


def test_cli_never_writes_the_key_even_echoed_in_a_401_and_exits_non_zero_on_a_failure(images, serve, tmp_path) -> None:
    other_key = "sk-proj-AnotherKeyShape0123456789"

    def unauthorised_for_red(body, n):
        if colour_of_request(body) != "red":
            return describe(body)
        message = f"Incorrect API key provided: Bearer {SECRET}. Also tried {other_key}."
        return 401, {}, json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                              "code": "invalid_api_key"}}).encode()

    server = serve(unauthorised_for_red)
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "ALDAR_LIT_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "aldar_lit.caption", f"input_dir={images}", f"base_url={server.base_url}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "1 of 3 images failed" in result.stderr
    assert server.auth_headers and all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    report = json.loads((images / "caption_report.json").read_text())
    assert report["failed"] == 1 and sorted(report["captioned"]) == ["blue.png", "green.png"]
    [failure] = report["failures"]
    assert failure["file"] == "red.png" and "AuthenticationError" in failure["error"]
    assert "Incorrect API key provided: <redacted>" in failure["error"] and "Also tried <redacted>" in failure["error"]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" and "Incorrect API key" in p.read_text() for p in written)  # the log has the error
    assert any(p.name == "config.yaml" for p in written)
    for secret in (SECRET, other_key, "Bearer sk-"):
        assert secret not in result.stdout + result.stderr
        assert [p for p in written if secret.encode() in p.read_bytes()] == []


def test_cli_ends_with_where_the_captions_are_and_the_training_command(images, serve, tmp_path) -> None:
    server = serve()
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "ALDAR_LIT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "aldar_lit.caption", f"input_dir={images}", f"base_url={server.base_url}",
               f"hydra.run.dir={tmp_path / 'run'}"]
    dry = subprocess.run([*command, "dry_run=true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-3].endswith(f"dry run of {images}: nothing captioned")
    assert dry.stdout.splitlines()[-1] == "next, caption them: the same command without dry_run=true"
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    closing = result.stdout.splitlines()[-4:]
    assert closing[0].endswith(f"captions are beside the images in {images} (0 failed)")
    assert closing[1:] == [f"  report: {images / 'caption_report.json'}", "next, train on them:",
                           f"  python train.py experiment=aldar_kose data.root={images}"]


def test_scrub_removes_the_configured_key_and_key_shapes_only() -> None:
    text = f"401: key {SECRET} / Authorization: Bearer abc.def-123 / sk-live_0123456789 / 12 sk-ins / max_tokens"
    assert scrub(text, [SECRET, None, "x"]) == ("401: key <redacted> / Authorization: <redacted> / <redacted> / "
                                               "12 sk-ins / max_tokens")
    assert scrub("a plain error", ["plainerr"]) == "a plain error"
