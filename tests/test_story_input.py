"""Story input: scene files, and a paragraph split by an LLM through the real `openai` client talking to a
small OpenAI-compatible HTTP server on 127.0.0.1."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from aldar_lit.config import ConfigError
from aldar_lit.config.infer import LLMConfig, StoryConfig
from aldar_lit.pipelines.story import Scene, StoryError, load_story, prompt_for, split_story_with_llm

from fixtures_storyboard import REPO_ROOT


def test_the_packaged_aldar_kose_story_loads():
    scenes = load_story(StoryConfig(file=str(REPO_ROOT / "conf/story/aldar_kose.yaml")))
    assert len(scenes) == 6 and scenes[0].pose == "standing"
    assert all(s.text.startswith("aldar_kose_man") for s in scenes)


def test_scene_fields_and_json_files(tmp_path):
    path = tmp_path / "story.json"
    path.write_text(json.dumps([{"text": "a man on a horse", "pose": "riding", "seed": 7, "guidance_scale": 6},
                                "a man by the fire"]))
    scenes = load_story(StoryConfig(file=str(path)))
    assert scenes == [Scene("a man on a horse", "riding", 7, 6.0), Scene("a man by the fire")]


def test_prompt_puts_the_trigger_in_front_once():
    assert prompt_for(Scene("walks home"), "aldar_kose_man", "3d render") == "aldar_kose_man, walks home, 3d render"
    assert prompt_for(Scene("aldar_kose_man walks"), "aldar_kose_man", "") == "aldar_kose_man walks"


@pytest.mark.parametrize("content, message", [
    ([], "has no scenes"),
    ({"scenes": []}, "has no scenes"),
    ([{"text": "  "}], r"scenes\[0\].text: must be a non-empty string"),
    ([{"text": "ok"}, {"text": "x", "pose": "flying"}], r"scenes\[1\].pose: unknown pose 'flying'"),
    ([{"text": "ok", "camera": "wide"}], r"unknown fields \['camera'\]"),
    ([{"text": "ok", "seed": "seven"}], r"scenes\[0\].seed: must be an integer"),
])
def test_bad_stories_name_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(StoryError, match=message) as err:
        load_story(StoryConfig(file=str(path)))
    assert "bad.yaml" in str(err.value)


def test_missing_story_file_and_config_errors(tmp_path):
    with pytest.raises(StoryError, match="story.file: no such file"):
        load_story(StoryConfig(file=str(tmp_path / "nope.yaml")))
    with pytest.raises(ConfigError, match="exactly one of story.file"):
        StoryConfig(file="a.yaml", text="a story")
    with pytest.raises(ConfigError, match="story.text: is empty"):
        StoryConfig(text="  ")


class ChatServer:
    """An OpenAI-compatible /v1/chat/completions endpoint that records requests and answers `reply`."""

    def __init__(self, reply: str, status: int = 200, error: str = "model overloaded"):
        self.reply, self.status, self.error, self.requests = reply, status, error, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if server.status != 200:
                    payload = {"error": {"message": server.error, "type": "server_error"}}
                else:
                    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": server.reply}}]}
                data = json.dumps(payload).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    servers = []

    def start(reply: str, status: int = 200, error: str = "model overloaded") -> ChatServer:
        servers.append(ChatServer(reply, status, error))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_llm_splits_a_paragraph_into_scenes(chat_server, monkeypatch):
    reply = json.dumps({"scenes": [{"text": "aldar_kose_man meets a bai", "pose": "standing"},
                                   {"text": "aldar_kose_man rides off", "pose": "galloping"}]})
    server = chat_server(reply)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    scenes = split_story_with_llm("Aldar Kose tricks a bai and rides off.", "aldar_kose_man",
                                  LLMConfig(model="story-model", base_url=server.url, num_scenes=2, max_retries=0))
    assert scenes == [Scene("aldar_kose_man meets a bai", "standing"), Scene("aldar_kose_man rides off", None)]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test-key"
    assert request["body"]["model"] == "story-model"
    system = request["body"]["messages"][0]["content"]
    assert "exactly 2 scenes" in system and "aldar_kose_man" in system and "riding" in system
    assert request["body"]["messages"][1]["content"] == "Aldar Kose tricks a bai and rides off."


def test_llm_errors_are_clear(chat_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    failing = chat_server("", status=500)
    with pytest.raises(StoryError, match=r"story.llm: the request to .*failed.*story.file="):
        split_story_with_llm("A story.", "t", LLMConfig(base_url=failing.url, max_retries=0))
    prose = chat_server("Once upon a time...")
    with pytest.raises(StoryError, match="did not answer with JSON"):
        split_story_with_llm("A story.", "t", LLMConfig(base_url=prose.url, max_retries=0))
    empty = chat_server(json.dumps({"scenes": []}))
    with pytest.raises(StoryError, match="has no scenes"):
        split_story_with_llm("A story.", "t", LLMConfig(base_url=empty.url, max_retries=0))


def test_llm_error_text_never_carries_the_key(chat_server, monkeypatch):
    key = "sk-proj-REJECTED-4f9a7c"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    server = chat_server("", status=401, error=f"Incorrect API key provided: {key}.")  # as api.openai.com answers
    with pytest.raises(StoryError, match="Incorrect API key provided") as caught:
        split_story_with_llm("A story.", "t", LLMConfig(base_url=server.url, max_retries=0))
    assert key not in str(caught.value) and caught.value.__cause__ is None  # the raw error is not chained either


def test_without_a_key_the_tool_says_to_give_scenes(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(StoryError, match="OPENAI_API_KEY is not set.*story.file="):
        load_story(StoryConfig(text="Aldar Kose tricks a bai."))
