"""An OpenAI-compatible chat-completions server on 127.0.0.1 for the captioning tests (the real `openai` client
talks to it over HTTP)."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image


def completion(content: str, finish_reason: str = "stop") -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}}


def colour_of_request(body: dict) -> str:
    """Decode the image the client sent and name its colour, so each answer depends on the real payload."""
    url = next(part["image_url"]["url"] for part in body["messages"][0]["content"] if part["type"] == "image_url")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    r, g, b = image.resize((1, 1)).getpixel((0, 0))
    return max(zip((r, g, b), ("red", "green", "blue")))[1]


def describe(body: dict) -> tuple[int, dict, bytes]:
    text = (f"aldar_kose_man in a medium shot, front view, standing with a smile. "
            f"He wears a blue robe and a pointed hat in front of a plain {colour_of_request(body)} background.")
    return 200, {}, json.dumps(completion(text)).encode()


class FakeOpenAI:
    """A chat-completions endpoint on 127.0.0.1; `behaviour(body, n)` answers the n-th request (from 0)."""

    def __init__(self, behaviour: Callable[[dict, int], tuple[int, dict, bytes]]):
        self.behaviour = behaviour
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth_headers.append(self.headers.get("Authorization", ""))
                status, headers, payload = server.behaviour(body, len(server.requests) - 1)
                if status == 0:  # hang until the test ends: the client must time out
                    server.release.wait(10)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    """`serve(behaviour)` starts a server (default: a caption naming the image's colour); all stop at the test's end."""
    servers = []

    def start(behaviour: Callable[[dict, int], tuple[int, dict, bytes]] = lambda body, n: describe(body)) -> FakeOpenAI:
        servers.append(FakeOpenAI(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
