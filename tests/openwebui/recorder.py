"""A tiny OpenAI-protocol server that records every request it gets, one JSON line each, and answers
like a plain model. It is how `capture.md` was made: Open WebUI pointed at it shows exactly what it sends
to its OpenAI connection. Standard library only, so it runs in either virtual environment:

    python tests/openwebui/recorder.py --port 8150 --log /tmp/owui-requests.jsonl

Answers: task prompts (a single user message starting with ``### Task:``) get the JSON the task asks
for; anything else gets ``"  You said: <last user text>\\n\\n"`` (the blanks show whether the front end
strips what it stores). A last user message containing ``REASON`` also streams a ``reasoning_content``
delta; one containing ``THINKTAG`` gets an inline ``<think>`` block in the content; one containing
``QUOTA`` is refused with parley's ``429 quota_exceeded`` in OpenAI's error shape.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "echo"


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def answer_for(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(reasoning, content) for a chat request."""
    users = [m for m in messages if m.get("role") == "user"]
    last = _text(users[-1]["content"]) if users else ""
    if len(messages) == 1 and last.startswith("### Task:"):
        if "concise title" in last:
            return "", json.dumps({"title": "Recorded Title"})
        if "tags categorizing" in last:
            return "", json.dumps({"tags": ["General", "Testing"]})
        if "Predict 3-5 useful messages" in last or "follow" in last.lower():
            return "", json.dumps({"follow_ups": ["Tell me more?", "Why?", "And then?"]})
        if "search queries" in last:
            return "", json.dumps({"queries": ["recorded query"]})
        return "", json.dumps({"text": "task"})
    reasoning = "Thinking it over." if "REASON" in last else ""
    content = f"  You said: {last}\n\n"
    if "THINKTAG" in last:
        content = f"<think>pondering</think>You said: {last}"
    return reasoning, content


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_path = "/dev/null"
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _record(self, body: Any) -> None:
        entry = {
            "t": time.time(),
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body,
        }
        with self.lock, open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._record(None)
        if self.path.rstrip("/").endswith("/models"):
            self._json(
                200,
                {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "recorder"}]},
            )
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode(errors="replace")
        self._record(body)
        if self.path.endswith("/embeddings"):
            inputs = body.get("input")
            inputs = inputs if isinstance(inputs, list) else [inputs]
            self._json(
                200,
                {
                    "object": "list",
                    "model": body.get("model"),
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.01 * ((i % 7) + 1)] * 384}
                        for i in range(len(inputs))
                    ],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                },
            )
            return
        if not self.path.endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found"}})
            return
        messages = body.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        if users and "QUOTA" in _text(users[-1].get("content")):
            self._json(
                429,
                {
                    "error": {
                        "message": "daily token quota exceeded",
                        "type": "insufficient_quota",
                        "param": None,
                        "code": "quota_exceeded",
                    }
                },
            )
            return
        reasoning, content = answer_for(messages)
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if reasoning:
                message["reasoning_content"] = reasoning
            self._json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
            self.wfile.flush()

        chunk({"role": "assistant", "content": ""})
        if reasoning:
            chunk({"reasoning_content": reasoning})
        words = content.split(" ")
        for i, word in enumerate(words):
            chunk({"content": word if i == len(words) - 1 else word + " "})
        chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [],
                "usage": usage,
            }
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    Recorder.log_path = args.log
    ThreadingHTTPServer(("127.0.0.1", args.port), Recorder).serve_forever()


if __name__ == "__main__":
    main()
