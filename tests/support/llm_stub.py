"""A local OpenAI-compatible chat server that answers from a script, over real HTTP.

It stands in for a hosted LLM (which cannot exist here): the ``openai`` brain talks to it through
langchain-openai exactly as it would to any endpoint. Each POST to ``/v1/chat/completions`` takes
the next scripted answer; when the script is used up it answers ``finish``. Requests are kept so a
test can check what the brain sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def tool_call(name: str, arguments: str | dict[str, Any], content: str = "") -> dict[str, Any]:
    """A scripted assistant turn calling one tool (``arguments`` raw text or a dict)."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"content": content, "tool_calls": [(name, raw)]}


def text_answer(content: str) -> dict[str, Any]:
    return {"content": content, "tool_calls": []}


def stall(seconds: float) -> dict[str, Any]:
    """A scripted silence: the server holds the request this long, then answers ``finish``
    (a client with a shorter timeout has given up by then)."""
    return {"stall": seconds}


def die() -> dict[str, Any]:
    """A scripted death: the server drops the connection unanswered and stops listening, as a
    killed server process does (every later request is refused)."""
    return {"die": True}


def http_error(status: int, message: str) -> dict[str, Any]:
    """A scripted HTTP error in OpenAI's shape; ``{key}`` in the message becomes the bearer token
    the request carried, as a hosted API's "Incorrect API key provided: sk-..." does."""
    return {"error": (status, message)}


@dataclass
class StubLLM:
    script: list[dict[str, Any]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def next_answer(self) -> dict[str, Any]:
        if self.script:
            return self.script.pop(0)
        return tool_call("finish", {"thought": "script used up"})


def _completion(answer: dict[str, Any], n: int) -> dict[str, Any]:
    calls = [
        {"id": f"call_{n}_{i}", "type": "function", "function": {"name": name, "arguments": raw}}
        for i, (name, raw) in enumerate(answer.get("tool_calls", []))
    ]
    message: dict[str, Any] = {"role": "assistant", "content": answer.get("content") or None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-stub-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@contextmanager
def serve(script: list[dict[str, Any]]) -> Iterator[StubLLM]:
    """Serve the script on 127.0.0.1 (a free port) for the duration of the block."""
    stub = StubLLM(script=list(script))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with lock:
                stub.requests.append(body)
                stub.headers.append(dict(self.headers))
                scripted = stub.next_answer()
                status = 200
                if "die" in scripted:
                    threading.Thread(target=_stop, daemon=True).start()
                    self.close_connection = True
                    return
            if "stall" in scripted:  # outside the lock: the next request is not held up
                time.sleep(float(scripted["stall"]))
                scripted = tool_call("finish", {"thought": "too late"})
            with lock:
                if "error" in scripted:
                    status, message = scripted["error"]
                    key = str(self.headers.get("Authorization", "")).removeprefix("Bearer ")
                    err = {"message": message.replace("{key}", key), "type": "invalid_request"}
                    answer = {"error": err}
                else:
                    answer = _completion(scripted, len(stub.requests))
            data = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client gave up first (a stalled answer past its timeout)

        def log_message(self, *args: Any) -> None:
            return None

    def _stop() -> None:
        server.shutdown()
        server.server_close()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        _stop()
