"""A minimal OpenAI-protocol server that answers at once, for measuring what a proxy in front of it adds.

``python -m bench.instant_upstream [--host 127.0.0.1] [--port 0] [--tokens 16]`` prints
``listening on http://HOST:PORT`` once it accepts connections and serves until SIGTERM / Ctrl-C. It is a
raw asyncio HTTP/1.1 server (standard library only; uvloop when installed) with keep-alive, answering:

- ``POST /v1/chat/completions`` (also ``/chat/completions``): a fixed answer of ``min(max_tokens, --tokens)``
  words (" w1 w2 ..."), one token a word, with ``usage`` (prompt tokens: the words of the messages).
  Not streamed: one ``chat.completion``. Streamed (``"stream": true``): ``chat.completion.chunk`` server-sent
  events (a role chunk, one content chunk per token, a ``finish_reason`` chunk, the usage chunk when
  ``stream_options.include_usage``), then ``data: [DONE]``, all in one write, chunked transfer encoding.
- ``GET /v1/models`` (also ``/models``): one model, ``--model``; ``GET /health``: ``ok``.

Anything else is 404 in OpenAI's error shape. Authorization headers are accepted and ignored. The
server does nothing between reading a request and writing its answer, so any latency a client sees
beyond the direct figures comes from what stands between them.

``python -m bench.instant_upstream --smoke [--requests 200]`` checks it instead of serving: it listens on a
free port, sends that many requests from one keep-alive ``http.client`` connection (half streamed, half
not), checks every answer, prints requests/s and the transport errors, non-2xx answers and wrong answers
it met, and exits (status 1 if any).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import signal
import sys
import time
import uuid
from collections import Counter
from typing import Any

__all__ = ["main", "serve", "smoke"]

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 413: b"Too Large"}
MAX_BODY = 16 * 1024 * 1024


def _head(status: int, content_type: bytes, extra: bytes, keep_alive: bool) -> bytes:
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s%s\r\n" % (
        status,
        _REASONS.get(status, b"Error"),
        content_type,
        extra,
        b"" if keep_alive else b"connection: close\r\n",
    )


def _json_response(status: int, value: Any, keep_alive: bool) -> bytes:
    body = json.dumps(value, separators=(",", ":")).encode()
    return _head(status, b"application/json", b"content-length: %d\r\n" % len(body), keep_alive) + body


def _error(status: int, message: str, keep_alive: bool) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return _json_response(status, {"error": error}, keep_alive)


class Upstream:
    def __init__(self, model: str, tokens: int) -> None:
        self.model = model
        self.tokens = tokens
        self.requests = 0

    def models(self, keep_alive: bool) -> bytes:
        data = [{"id": self.model, "object": "model", "created": 1_700_000_000, "owned_by": "bench"}]
        return _json_response(200, {"object": "list", "data": data}, keep_alive)

    def completion(self, body: bytes, keep_alive: bool) -> bytes:
        try:
            request = json.loads(body)
            messages = request["messages"]
            assert isinstance(messages, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _error(400, "the body is not a chat completion request", keep_alive)
        self.requests += 1
        asked = request.get("max_completion_tokens") or request.get("max_tokens")
        n = max(1, min(int(asked or self.tokens), self.tokens))
        finish = "length" if asked and n >= int(asked) else "stop"
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        model = str(request.get("model") or self.model)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        words = [f" w{i}" for i in range(1, n + 1)]
        if not request.get("stream"):
            message = {"role": "assistant", "content": "".join(words), "refusal": None}
            return _json_response(
                200,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                    "system_fingerprint": None,
                },
                keep_alive,
            )
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        prefix = (
            f'{{"id":"{ident}","object":"chat.completion.chunk","created":{created},"model":{json.dumps(model)},'
            '"system_fingerprint":null,'
        )
        tail = ',"usage":null}' if include_usage else "}"

        def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return "data: " + prefix + '"choices":[' + json.dumps(choice, separators=(",", ":")) + "]" + tail + "\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w}) for w in words]
        events.append(chunk({}, finish))
        if include_usage:
            events.append("data: " + prefix + '"choices":[],"usage":' + json.dumps(usage) + "}\n\n")
        events.append("data: [DONE]\n\n")
        out = [
            _head(200, b"text/event-stream", b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n", keep_alive)
        ]
        for event in events:  # one HTTP chunk per event, as a server that generates them one by one sends them
            data = event.encode()
            out.append(b"%x\r\n%s\r\n" % (len(data), data))
        out.append(b"0\r\n\r\n")
        return b"".join(out)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                try:
                    method, target, version = lines[0].split(b" ", 2)
                except ValueError:
                    writer.write(_error(400, "bad request line", False))
                    break
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name:
                        headers[name.strip().lower()] = value.strip().lower()
                keep_alive = headers.get(b"connection") != b"close" and version == b"HTTP/1.1"
                if headers.get(b"transfer-encoding", b"identity") != b"identity":
                    writer.write(_error(400, "chunked request bodies are not supported", False))
                    break
                length = int(headers.get(b"content-length") or 0)
                if length > MAX_BODY:
                    writer.write(_error(413, "body too large", False))
                    break
                body = await reader.readexactly(length) if length else b""
                path = target.split(b"?", 1)[0].rstrip(b"/")
                if path in (b"/v1/chat/completions", b"/chat/completions"):
                    response = (
                        self.completion(body, keep_alive) if method == b"POST" else _error(405, "use POST", keep_alive)
                    )
                elif path in (b"/v1/models", b"/models") and method == b"GET":
                    response = self.models(keep_alive)
                elif path == b"/health":
                    response = _head(200, b"text/plain", b"content-length: 2\r\n", keep_alive) + b"ok"
                else:
                    response = _error(404, f"no route {method.decode()} {target.decode()}", keep_alive)
                writer.write(response)
                await writer.drain()
                if not keep_alive:
                    break
        with contextlib.suppress(Exception):
            writer.close()
            await writer.wait_closed()


async def serve(host: str, port: int, model: str, tokens: int, stop: asyncio.Event) -> None:
    upstream = Upstream(model, tokens)
    server = await asyncio.start_server(upstream.handle, host, port, backlog=1024, limit=MAX_BODY)
    bound = server.sockets[0].getsockname()
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    async with server:
        await stop.wait()


# --- the smoke check -------------------------------------------------------------------------------------
def _ask(conn: http.client.HTTPConnection, n: int, tokens: int, stream: bool) -> str | None:
    """One request; None if the answer is right, else what is wrong with it. Raises on transport errors."""
    body: dict[str, Any] = {
        "model": "instant",
        "messages": [{"role": "user", "content": f"Request {n}: answer, please."}],
        "max_tokens": tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    if not 200 <= response.status < 300:
        return f"HTTP {response.status}"
    expected = "".join(f" w{i}" for i in range(1, tokens + 1))
    try:
        if not stream:
            answer = json.loads(raw)
            text, usage = answer["choices"][0]["message"]["content"], answer["usage"]
        else:
            events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
            if events[-1:] != ["[DONE]"]:
                return "no [DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
            usage = next((c["usage"] for c in chunks if c.get("usage")), {})
    except (ValueError, LookupError, TypeError) as exc:
        return f"unreadable answer ({type(exc).__name__})"
    if text != expected or usage.get("completion_tokens") != tokens:
        return f"wrong answer {text[:40]!r}"
    return None


def _client(port: int, requests: int, tokens: int) -> tuple[dict[bool, float], Counter[str]]:
    """Seconds per mode (streamed or not) and the problems, by kind."""
    problems: Counter[str] = Counter()
    seconds = {False: 0.0, True: 0.0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for n in range(requests):
            stream = n % 2 == 1
            start = time.perf_counter()
            try:
                wrong = _ask(conn, n, tokens, stream)
            except (OSError, http.client.HTTPException) as exc:
                problems[f"transport error: {type(exc).__name__}"] += 1
                conn.close()  # the next request opens a new connection
                continue
            finally:
                seconds[stream] += time.perf_counter() - start
            if wrong is not None:
                problems[("non-2xx answer: " if wrong.startswith("HTTP ") else "") + wrong] += 1
    finally:
        conn.close()
    return seconds, problems


async def smoke(model: str, tokens: int, requests: int) -> int:
    """Serve on a free port, check ``requests`` answers from a client thread, print the figures; the exit
    status: 0 when every answer was right."""
    upstream = Upstream(model, tokens)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0, backlog=1024, limit=MAX_BODY)
    port = int(server.sockets[0].getsockname()[1])
    async with server:
        seconds, problems = await asyncio.to_thread(_client, port, requests, tokens)
    transport = sum(n for what, n in problems.items() if what.startswith("transport error"))
    non_2xx = sum(n for what, n in problems.items() if what.startswith("non-2xx"))
    wrong = sum(problems.values()) - transport - non_2xx
    half = {False: (requests + 1) // 2, True: requests // 2}
    print(f"python -m bench.instant_upstream --smoke: {requests} requests, 1 keep-alive client, {tokens} tokens")
    for stream in (False, True):
        rate = half[stream] / seconds[stream] if seconds[stream] else 0.0
        print(f"requests/s, {'streamed' if stream else 'not streamed'}: {rate:,.0f}")
    print(f"errors: {transport} transport errors, {non_2xx} non-2xx answers, {wrong} wrong answers")
    for what, n in problems.most_common(10):
        print(f"  {what} (x{n})")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instant_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--model", default="instant")
    parser.add_argument("--tokens", type=int, default=16, help="words in the answer (fewer if max_tokens asks)")
    parser.add_argument("--smoke", action="store_true", help="check the server with --requests requests, then exit")
    parser.add_argument("--requests", type=int, default=200, help="requests the smoke check sends (200)")
    args = parser.parse_args(argv)
    if args.smoke:
        sys.exit(asyncio.run(smoke(args.model, max(1, args.tokens), max(2, args.requests))))
    try:
        import uvloop  # type: ignore[import-not-found]

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, args.model, max(1, args.tokens), stop)

    runner(run())
    sys.exit(0)


if __name__ == "__main__":
    main()
