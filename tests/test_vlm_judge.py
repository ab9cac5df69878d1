"""Prompt alignment by a vision-language model, through the real `openai` client against a local OpenAI-compatible
server (tests/fixtures_openai.py): scores, cost, cache, retries, malformed and out-of-range answers, no key."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from aldar_lit.config.evaluate import VlmJudgeConfig
from aldar_lit.evaluation.vlm_judge import RUBRICS, JudgeItem, judge, parse_score, RejectedJudgement
from fixtures_openai import colour_of_request, completion, serve  # noqa: F401

SECRET = "sk-test-DO-NOT-LEAK-5e1b7d"
SCORES = {"scene": 3, "character_action": 4, "camera": 1}


def aspect_of(body: dict) -> str:
    text = body["messages"][0]["content"][0]["text"]
    return next(aspect for aspect, rubric in RUBRICS.items() if text.startswith(rubric))


def answer(score) -> tuple[int, dict, bytes]:
    return 200, {}, json.dumps(completion(f"Analysis: the frame mostly matches.\nScore: {score}")).encode()


def by_aspect(body: dict, n: int) -> tuple[int, dict, bytes]:
    return answer(SCORES[aspect_of(body)])


def items() -> list[JudgeItem]:
    return [JudgeItem(("simple", "suite", 0, 1), Image.new("RGB", (96, 64), (220, 20, 20)), "aldar_kose_man at a bazaar"),
            JudgeItem(("simple", "suite", 0, 2), Image.new("RGB", (96, 64), (20, 20, 220)), "aldar_kose_man on a horse")]


def config(tmp_path, base_url: str, **overrides) -> VlmJudgeConfig:
    return VlmJudgeConfig(base_url=base_url, cache_dir=str(tmp_path / "judge_cache"), max_retries=2, **overrides)


def test_each_aspect_is_scored_0_to_100_with_its_cost_and_a_rerun_is_free(tmp_path, serve) -> None:
    server = serve(by_aspect)
    cfg = config(tmp_path, server.base_url)
    scores, report = judge(items(), cfg, SECRET)
    assert scores == {(item.key, aspect): 25.0 * score for item in items() for aspect, score in SCORES.items()}
    assert report.judged == 6 and report.api_requests == 6 and not report.failures
    assert (report.prompt_tokens, report.completion_tokens) == (720, 240)  # the server's usage, 120 + 40 each
    assert report.estimated_cost_usd == pytest.approx(720 * 2.5e-6 + 240 * 10e-6)
    sent = server.requests[0]["messages"][0]["content"]
    assert "Description: aldar_kose_man" in sent[0]["text"] and "Score: <an integer from 0 to 4>" in sent[0]["text"]
    assert sent[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert server.auth_headers[0] == f"Bearer {SECRET}"
    # the image sent is the frame's own pixels
    assert {colour_of_request(body) for body in server.requests} == {"red", "blue"}

    again, cached = judge(items(), cfg, SECRET)
    assert again == scores and cached.from_cache == 6 and cached.api_requests == 0 == cached.judged
    assert cached.cached_cost_usd == pytest.approx(report.estimated_cost_usd) and len(server.requests) == 6
    # the key is the image, the prompt and the model: another prompt or model is asked again
    judge([JudgeItem("x", items()[0].image, "aldar_kose_man in the snow")], config(tmp_path, server.base_url,
                                                                                   aspects=["scene"]), SECRET)
    judge(items()[:1], config(tmp_path, server.base_url, aspects=["scene"], vision_model="gpt-4.1"), SECRET)
    assert len(server.requests) == 8


def test_a_429_and_a_500_are_retried_by_the_client(tmp_path, serve) -> None:
    def failing_first(body, n):
        if n == 0:
            return 429, {"retry-after-ms": "20"}, json.dumps({"error": {"message": "slow down"}}).encode()
        if n == 1:
            return 500, {"retry-after-ms": "20"}, json.dumps({"error": {"message": "oops"}}).encode()
        return by_aspect(body, n)

    server = serve(failing_first)
    scores, report = judge(items()[:1], config(tmp_path, server.base_url, aspects=["scene"]), SECRET)
    assert scores == {(items()[0].key, "scene"): 75.0} and not report.failures
    assert report.api_requests == 3 == len(server.requests)


@pytest.mark.parametrize("reply, reason", [
    ("The frame shows a man at a bazaar.", "no 'Score: <0-4>' line"),
    ("Analysis: fine.\nScore: 7", "score 7 is outside the 0-4 scale"),
    ("Analysis: fine.\nScore: -1", "score -1 is outside the 0-4 scale"),
    ("Analysis: fine.\nScore: 3.5", "malformed score '3.5'"),
    ("Analysis: fine.\nScore: good", "malformed score 'good'"),
])
def test_a_malformed_or_out_of_range_answer_is_a_failure_never_scored_nor_cached(tmp_path, serve, reply,
                                                                                  reason) -> None:
    def bad_for_red(body, n):
        if colour_of_request(body) == "red":
            return 200, {}, json.dumps(completion(reply)).encode()
        return answer(2)

    server = serve(bad_for_red)
    cfg = config(tmp_path, server.base_url, aspects=["scene"])
    scores, report = judge(items(), cfg, SECRET)
    red, blue = (item.key for item in items())
    assert scores == {(red, "scene"): None, (blue, "scene"): 50.0}
    (failure,) = report.failures
    assert failure["item"] == str(red) and failure["aspect"] == "scene" and reason in failure["error"]
    assert report.prompt_tokens == 240  # the rejected answer was paid for and is counted
    judge(items(), cfg, SECRET)
    assert len(server.requests) == 3  # the failure is asked again, the good answer comes from the cache


def test_a_score_line_is_read_in_the_formats_models_write() -> None:
    assert parse_score("Analysis: ok\nScore: 4") == 4
    assert parse_score("Analysis: ok\n**Score:** 2") == 2
    assert parse_score("score: 0.") == 0
    assert parse_score("Score: 1\nrevised after a second look\nScore: 3") == 3
    with pytest.raises(RejectedJudgement, match="malformed score"):
        parse_score("Score: 3 out of 4")


def test_without_a_key_or_switched_off_the_judge_says_so_once_and_asks_nothing(tmp_path, serve, caplog) -> None:
    server = serve(by_aspect)
    with caplog.at_level(logging.INFO, logger="aldar_lit.evaluation.vlm_judge"):
        scores, report = judge(items(), config(tmp_path, server.base_url), None)
    assert scores == {} and "OPENAI_API_KEY is not set" in report.skipped
    assert [r.getMessage() for r in caplog.records] == [f"prompt alignment by a VLM skipped: {report.skipped}"]
    assert report.summary().startswith("VLM judge (gpt-4o) skipped: OPENAI_API_KEY is not set")
    scores, report = judge(items(), config(tmp_path, server.base_url, enabled=False), SECRET)
    assert scores == {} and report.skipped == "vlm_judge.enabled=false" and server.requests == []


def test_bad_judge_settings_are_refused_naming_the_key(tmp_path) -> None:
    from hydra.errors import ConfigCompositionException
    from test_eval_bad_input import eval_config

    assert eval_config(tmp_path).vlm_judge.aspects == ["scene", "character_action", "camera"]  # conf/evaluate.yaml
    with pytest.raises(ConfigCompositionException, match=r"override vlm_judge.aspects=") as failure:  # Enum fields
        eval_config(tmp_path, "vlm_judge.aspects=[scene,lighting]")
    assert "Invalid value 'lighting', expected one of [scene, character_action, camera]" in str(failure.value.__cause__)
    with pytest.raises(ConfigCompositionException, match="override vlm_judge.image_detail="):
        eval_config(tmp_path, "vlm_judge.image_detail=ultra")
