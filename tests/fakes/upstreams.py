"""A local stand-in for remote LLM providers that speaks their real wire protocols over real HTTP/1.1:
OpenAI's ``/v1/chat/completions`` (server-sent events with ``include_usage``, or one JSON object),
``/v1/embeddings`` and ``/v1/models``, and Ollama's ``/api/chat`` (newline-delimited JSON), ``/api/embed``
and ``/api/tags``.

It runs on 127.0.0.1, on a free port, in a thread of its own with its own event loop, so that a test's
engine talks to it over a socket exactly as it would to vLLM or Ollama. The model name picks how it
behaves, so one server serves every scenario:

===================  =================================================================================
model                behaviour
===================  =================================================================================
``fake-ok``          answers "You said: <last user message>", one word per chunk (any other name too)
``fake-think``       reasoning first (``reasoning_content`` / ``thinking``), then the answer
``fake-slow``        a long answer, ``slow_delay_s`` between chunks (for cancellation)
``fake-401``         HTTP 401 with the provider's error body
``fake-500``         HTTP 500 with the provider's error body
``fake-hang``        reads the request and never answers (for the read timeout)
``fake-stall``       sends ``cut_after`` chunks, then nothing more (read timeout mid-stream)
``fake-cut``         sends ``cut_after`` chunks, then drops the connection (an incomplete chunked body)
``fake-truncate``    sends ``cut_after`` chunks, then ends the body cleanly, with no finish nor [DONE]
``fake-badjson``     sends one chunk, then a line that is not JSON
``fake-nostream``    OpenAI only: ignores ``stream: true`` and answers with one chat.completion object
``fake-tools``       OpenAI only: given ``tools`` and a last message from the user, calls a tool (the
                     one ``tool_choice`` names, else the first; with ``parallel_tool_calls`` not false
                     and two tools or more, the first two) with ``{"query": <the user's text>}``,
                     arguments streamed in three pieces, ``finish_reason: "tool_calls"``; after a tool
                     result, answers "The tool said: <result>"
===================  =================================================================================

Any chat model: images in a user message (``image_url`` data URLs) are described in the answer as
``[image image/png 68 bytes]``; ``response_format`` ``json_object`` / ``json_schema`` makes the answer a JSON
object ``{"said": <text>}``; a prompt of more than ``context_words`` words is refused with OpenAI's 400
``context_length_exceeded`` body.

Embeddings (``/v1/embeddings``, ``/api/embed``) take the model name the same way:

==========================  ==========================================================================
model                       behaviour
==========================  ==========================================================================
``fake-embed-<N>``          N-dimensional unit vectors, e.g. ``fake-embed-8``, ``fake-embed-3072``
``fake-embed-<N>-reversed`` the same, with OpenAI's ``data`` in reverse order (the protocol orders by
                            ``index``, not by position)
``fake-401``/``fake-500``   the provider's error status and body, as for chat; ``fake-hang`` never answers
``fake-badjson``            HTTP 200 with a body that is not JSON
any other name              HTTP 404, the provider's "model not found"
==========================  ==========================================================================

A text's vector is the normalised sum of one hash-seeded random vector per distinct lower-case word
(bag-of-words hashing): deterministic across runs and processes, and texts that share words are close,
which is enough for search tests. OpenAI's ``usage.prompt_tokens`` and Ollama's ``prompt_eval_count`` are
the inputs' word counts. More than 2048 inputs in one request is an HTTP 400, as at OpenAI.

``max_tokens`` (Ollama: ``options.num_predict``) and ``stop`` are honoured the way providers do: a
finish reason of "length", or the answer cut before the stop text. Usage counts words: ``prompt_tokens``
the words of all messages, ``completion_tokens`` the words sent. Every request is recorded in
``requests``; every stream the client abandoned is counted in ``abandoned``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Self

__all__ = ["FakeUpstreams", "RecordedRequest", "fake_embedding", "fake_upstreams"]

MODELS = (
    "fake-ok", "fake-think", "fake-slow", "fake-401", "fake-500", "fake-hang", "fake-stall", "fake-cut",
    "fake-truncate", "fake-badjson", "fake-nostream", "fake-tools",
)  # fmt: skip
_REASONING = "Let me think about what they said."
_EMBED_MODEL = re.compile(r"fake-embed-(\d+)(-reversed)?")
_MAX_EMBED_INPUTS = 2048


@lru_cache(maxsize=4096)
def _word_vector(word: str, dims: int) -> tuple[float, ...]:
    seed = int.from_bytes(hashlib.sha256(f"{dims}:{word}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dims))


def fake_embedding(text: str, dims: int) -> list[float]:
    """The fake servers' vector for ``text``: a unit vector from its set of lower-case words."""
    words = sorted(set(re.findall(r"\w+", text.lower()))) or [""]
    total = [0.0] * dims
    for word in words:
        for i, x in enumerate(_word_vector(word, dims)):
            total[i] += x
    norm = math.sqrt(sum(x * x for x in total)) or 1.0
    return [x / norm for x in total]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _Reply:
    words: list[str]
    finish: str
    prompt_tokens: int
    thinking: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.words)


class _ClientGone(Exception):
    pass


class FakeUpstreams:
    """Start with ``with FakeUpstreams() as fake:``; point engines at ``fake.openai_url`` or
    ``fake.ollama_url``."""

    def __init__(
        self, *, cut_after: int = 3, slow_delay_s: float = 0.05, slow_words: int = 400, context_words: int = 2000
    ) -> None:
        self.context_words = context_words
        self.cut_after = cut_after
        self.slow_delay_s = slow_delay_s
        self.slow_words = slow_words
        self.requests: list[RecordedRequest] = []
        self.abandoned = 0
        """Streams whose client closed the connection before the end."""
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ollama_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeUpstreams:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-upstreams", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        loop.close()
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_abandoned(self, count: int, timeout_s: float = 2.0) -> bool:
        """Wait until at least ``count`` streams were abandoned by their client."""
        deadline = time.monotonic() + timeout_s
        while self.abandoned < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.abandoned >= count

    # -- HTTP/1.1, one request per connection ----------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request = await self._read_request(reader)
            if request is not None:
                self.requests.append(request)
                await self._route(request, reader, writer)
        except (_ClientGone, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return RecordedRequest(method, path.split("?", 1)[0], headers, body)

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}.get(
            status, "Internal Server Error"
        )
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()

    async def _route(
        self, request: RecordedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        match request.method, request.path:
            case "GET", "/v1/models":
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS]
                await self._respond(writer, 200, {"object": "list", "data": data})
            case "GET", "/api/tags":
                await self._respond(writer, 200, {"models": [{"name": m, "model": m} for m in MODELS]})
            case "POST", "/v1/chat/completions":
                await self._openai_chat(request.body or {}, reader, writer)
            case "POST", "/api/chat":
                await self._ollama_chat(request.body or {}, reader, writer)
            case "POST", "/v1/embeddings":
                await self._embed(request.body or {}, writer, ollama=False)
            case "POST", "/api/embed":
                await self._embed(request.body or {}, writer, ollama=True)
            case _:
                await self._respond(writer, 404, {"error": {"message": f"no route {request.path}"}})

    # -- behaviour -------------------------------------------------------------------------------------

    def _reply(self, body: dict[str, Any], max_tokens: int | None, stop: list[str]) -> _Reply:
        messages = body.get("messages") or []
        prompt_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
        last = messages[-1] if messages else {}
        said = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        images = [f"[image {kind} {size} bytes]" for kind, size in _images(last.get("content"))]
        if body.get("model") == "fake-slow":
            words = [f"word{i}" for i in range(self.slow_words)]
        elif last.get("role") == "tool":
            words = ["The", "tool", "said:", *_text(last.get("content")).split()]
        else:
            words = ["You", "said:", *said.split(), *images]
        if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
            words = json.dumps({"said": " ".join(words)}).split(" ")
        tokens = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
        finish = "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        text = "".join(tokens)
        cuts = [i for s in stop if s and (i := text.find(s)) != -1]
        if cuts:
            kept, total = [], 0
            for token in tokens:  # keep whole tokens before the stop, then the part of the next one
                if total + len(token) > min(cuts):
                    if min(cuts) > total:
                        kept.append(token[: min(cuts) - total])
                    break
                kept.append(token)
                total += len(token)
            tokens, finish = kept, "stop"
        thinking = [w if i == 0 else f" {w}" for i, w in enumerate(_REASONING.split())]
        return _Reply(tokens, finish, prompt_tokens, thinking if body.get("model") == "fake-think" else [])

    @staticmethod
    def _tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
        """The calls ``fake-tools`` makes: none unless it has tools and the user spoke last."""
        tools = [t["function"]["name"] for t in body.get("tools") or [] if isinstance(t, dict) and "function" in t]
        messages = body.get("messages") or []
        if body.get("model") != "fake-tools" or not tools or not messages or messages[-1].get("role") != "user":
            return []
        choice = body.get("tool_choice")
        if choice == "none":
            return []
        if isinstance(choice, dict):
            tools = [choice["function"]["name"]]
        elif body.get("parallel_tool_calls") is not False:
            tools = tools[:2]
        else:
            tools = tools[:1]
        query = _text(messages[-1].get("content"))
        return [
            {"id": f"call_up{i}", "name": name, "arguments": json.dumps({"query": query, "n": i})}
            for i, name in enumerate(tools)
        ]

    async def _failure(self, model: str, writer: asyncio.StreamWriter, *, ollama: bool) -> bool:
        """Answer the error behaviours; True when the request was one."""
        if model == "fake-401":
            body: Any = (
                {"error": "unauthorized: invalid API key"} if ollama else
                {"error": {"message": "Incorrect API key provided: sk-fake.", "type": "invalid_request_error",
                           "param": None, "code": "invalid_api_key"}}
            )  # fmt: skip
            await self._respond(writer, 401, body)
            return True
        if model == "fake-500":
            body = (
                {"error": "llama runner process has terminated"} if ollama else
                {"error": {"message": "The server had an error while processing your request.",
                           "type": "server_error", "param": None, "code": None}}
            )  # fmt: skip
            await self._respond(writer, 500, body)
            return True
        if model == "fake-hang":
            await asyncio.sleep(3600)
            return True
        return False

    async def _stream(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, content_type: str, model: str,
        pieces: list[bytes], end: list[bytes],
    ) -> None:  # fmt: skip
        """Send ``pieces`` then ``end`` as a chunked body, misbehaving the way ``model`` asks."""
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n".encode()
        )
        gone = asyncio.ensure_future(reader.read(1))  # EOF here = the client closed its side
        try:
            delay = self.slow_delay_s if model == "fake-slow" else 0.0
            for index, piece in enumerate(pieces):
                if model in ("fake-cut", "fake-truncate", "fake-stall") and index == self.cut_after:
                    break
                if model == "fake-badjson" and index == 1:
                    piece = b"data: {not json\n\n" if content_type == "text/event-stream" else b"{not json\n"
                await self._chunk(writer, piece, gone)
                if delay:
                    await asyncio.sleep(delay)
            else:
                for piece in end:
                    await self._chunk(writer, piece, gone)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return
            if model == "fake-stall":
                await asyncio.sleep(3600)
            elif model == "fake-truncate":
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            else:  # fake-cut: no terminating chunk, and a reset rather than a clean close
                writer.transport.abort()
        finally:
            gone.cancel()

    async def _chunk(self, writer: asyncio.StreamWriter, piece: bytes, gone: asyncio.Future[bytes]) -> None:
        if gone.done():
            self.abandoned += 1
            raise _ClientGone
        writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        try:
            await writer.drain()
        except ConnectionError:
            self.abandoned += 1
            raise _ClientGone from None

    # -- OpenAI ---------------------------------------------------------------------------------------

    async def _openai_chat(
        self, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        model = str(body.get("model", ""))
        if await self._failure(model, writer, ollama=False):
            return
        words = sum(len(_text(m.get("content")).split()) for m in body.get("messages") or [])
        if words > self.context_words:
            await self._respond(writer, 400, {"error": {
                "message": f"This model's maximum context length is {self.context_words} tokens. However, your "
                           f"messages resulted in {words} tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})  # fmt: skip
            return
        calls = self._tool_calls(body)
        stop = body.get("stop") or []
        reply = self._reply(
            body,
            body.get("max_completion_tokens", body.get("max_tokens")),
            [stop] if isinstance(stop, str) else stop,
        )
        usage = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": len(reply.words) + len(reply.thinking),
            "total_tokens": reply.prompt_tokens + len(reply.words) + len(reply.thinking),
        }
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if calls:
            reply = _Reply([], "tool_calls", reply.prompt_tokens)
            usage["completion_tokens"] = sum(len(c["arguments"].split()) for c in calls)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream") or model == "fake-nostream":
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or (None if calls else "")}
            if reply.thinking:
                message["reasoning_content"] = "".join(reply.thinking)
            if calls:
                message["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in calls
                ]
            await self._respond(writer, 200, {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": reply.finish, "logprobs": None}],
                "usage": usage,
            })  # fmt: skip
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            chunk: dict[str, Any] = {
                "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }  # fmt: skip
            if include_usage:
                chunk["usage"] = None
            chunk.update(extra)
            return f"data: {json.dumps(chunk)}\n\n".encode()

        pieces = [event({"role": "assistant", "content": ""})]
        pieces += [event({"reasoning_content": t}) for t in reply.thinking]
        pieces += [event({"content": w}) for w in reply.words]
        for index, call in enumerate(calls):  # a header, then the arguments in three pieces, as OpenAI streams
            pieces.append(event({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                  "function": {"name": call["name"], "arguments": ""}}]}))  # fmt: skip
            third = max(1, len(call["arguments"]) // 3)
            parts = [call["arguments"][:third], call["arguments"][third : 2 * third], call["arguments"][2 * third :]]
            pieces += [event({"tool_calls": [{"index": index, "function": {"arguments": part}}]}) for part in parts]
        end = [event({}, reply.finish)]
        if include_usage:
            end.append(event({}, None, choices=[], usage=usage))
        end.append(b"data: [DONE]\n\n")
        await self._stream(writer, reader, "text/event-stream", model, pieces, end)

    # -- embeddings, both protocols --------------------------------------------------------------------

    async def _embed(self, body: dict[str, Any], writer: asyncio.StreamWriter, *, ollama: bool) -> None:
        model = str(body.get("model", ""))
        if await self._failure(model, writer, ollama=ollama):
            return
        if model == "fake-badjson":
            payload = b"{not json"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            return
        match = _EMBED_MODEL.fullmatch(model)
        if match is None:
            missing: Any = (
                {"error": f'model "{model}" not found, try pulling it first'} if ollama else
                {"error": {"message": f"The model `{model}` does not exist or you do not have access to it.",
                           "type": "invalid_request_error", "param": None, "code": "model_not_found"}}
            )  # fmt: skip
            await self._respond(writer, 404, missing)
            return
        given = body.get("input", [])
        texts = [given] if isinstance(given, str) else list(given)
        if len(texts) > _MAX_EMBED_INPUTS or not all(isinstance(t, str) for t in texts):
            message = f"'$.input' must be a string or at most {_MAX_EMBED_INPUTS} strings"
            await self._respond(writer, 400, {"error": message} if ollama else {
                "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})  # fmt: skip
            return
        dims = int(match.group(1))
        vectors = [fake_embedding(t, dims) for t in texts]
        tokens = sum(len(t.split()) for t in texts)
        if ollama:
            await self._respond(writer, 200, {
                "model": model, "embeddings": vectors, "total_duration": 1000, "load_duration": 10,
                "prompt_eval_count": tokens,
            })  # fmt: skip
            return
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        if match.group(2):
            data.reverse()
        await self._respond(writer, 200, {
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip

    # -- Ollama ---------------------------------------------------------------------------------------

    async def _ollama_chat(
        self, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        model = str(body.get("model", ""))
        if await self._failure(model, writer, ollama=True):
            return
        options = body.get("options") or {}
        num_predict = options.get("num_predict")
        reply = self._reply(body, num_predict if num_predict is not None and num_predict >= 0 else None,
                            list(options.get("stop") or []))  # fmt: skip
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")

        def line(content: str, *, thinking: str = "", done: bool = False) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            return {"model": model, "created_at": now, "message": message, "done": done}

        final = line("", done=True) | {
            "done_reason": reply.finish, "total_duration": 1000, "load_duration": 10,
            "prompt_eval_count": reply.prompt_tokens, "prompt_eval_duration": 100,
            "eval_count": len(reply.words) + len(reply.thinking), "eval_duration": 800,
        }  # fmt: skip
        if body.get("stream") is False:  # Ollama streams unless told not to
            whole = final | {"message": line(reply.text, thinking="".join(reply.thinking))["message"]}
            await self._respond(writer, 200, whole)
            return
        pieces = [line("", thinking=t) for t in reply.thinking] + [line(w) for w in reply.words]
        await self._stream(
            writer, reader, "application/x-ndjson", model,
            [json.dumps(p).encode() + b"\n" for p in pieces], [json.dumps(final).encode() + b"\n"],
        )  # fmt: skip


def _text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content or "")


def _images(content: Any) -> list[tuple[str, int]]:
    """(media type, size) of each data-URL image in a message's content."""
    found = []
    for part in content if isinstance(content, list) else []:
        url = ((part.get("image_url") or {}).get("url") or "") if isinstance(part, dict) else ""
        if url.startswith("data:") and ";base64," in url:
            head, data = url.split(";base64,", 1)
            found.append((head[5:], len(base64.b64decode(data))))
    return found


@contextmanager
def fake_upstreams(**options: Any) -> Iterator[FakeUpstreams]:
    """``with fake_upstreams() as fake: ...``, or ``yield from`` it in a pytest fixture."""
    with FakeUpstreams(**options) as fake:
        yield fake
