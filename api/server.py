"""The HTTP edge: how uvicorn serves parley. One helper builds the server's configuration for ``parley api``
(and so ``parley serve``) and the tests alike.

* Forwarded headers are believed only from ``trusted_proxies`` (uvicorn's ProxyHeadersMiddleware: CIDRs,
  the right-most address that is not itself a trusted proxy); with none, they are ignored.
* A request must arrive in time. uvicorn bounds only the idle keep-alive wait, so ``EdgeProtocol`` (its h11
  protocol, never httptools) adds two timers: the request line and headers must all arrive within
  ``header_timeout_s`` of the request's first byte (of the connection, for its first request: a connection
  that sends nothing is closed too); the body may pause at most ``body_timeout_s`` between two reads, else
  it is answered 408 and the connection closed. A pause that is ours (the app has not yet read what came,
  or not yet asked for the body after ``Expect: 100-continue``) does not count.
* What the protocol learns about a request, it leaves in the request's ``scope["state"]`` for the request
  log: ``TIMED_OUT`` (the body did not arrive in time) and ``CLIENT_GONE`` (the client left before the
  response began).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import h11
import msgspec
import structlog
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from adapters.settings import Settings
from api.errors import error_body

__all__ = ["EdgeConfig", "EdgeProtocol", "server_config", "TIMED_OUT", "CLIENT_GONE"]

TIMED_OUT = "parley.timed_out"
CLIENT_GONE = "parley.client_gone"

log = structlog.get_logger("parley.http")

_TIMEOUT_BODY = msgspec.json.encode(
    error_body("REQUEST_TIMEOUT", "the request body stopped arriving; send it again without pausing")
)


class EdgeConfig(uvicorn.Config):
    """uvicorn's configuration, served by ``EdgeProtocol`` with its two request timeouts."""

    def __init__(self, app: Any, *, header_timeout_s: float, body_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, http=EdgeProtocol, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s


def server_config(app: Any, settings: Settings, **overrides: Any) -> EdgeConfig:
    """How parley is served: address, forwarded-header trust, timeouts. ``overrides`` (lifespan, log level,
    graceful shutdown) are uvicorn's own options."""
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies),  # never uvicorn's default, 127.0.0.1
        timeout_keep_alive=settings.keep_alive_timeout_s,
        log_config=None,
        access_log=False,  # the app logs every request itself (api/app.py)
    )
    options.update(overrides)
    return EdgeConfig(
        app, header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s, **options
    )


class EdgeProtocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a body (pause) timeout."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        assert isinstance(config, EdgeConfig), "serve EdgeProtocol with an EdgeConfig"
        self.header_timeout_s = config.header_timeout_s
        self.body_timeout_s = config.body_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._timed_cycle: object = None  # the request whose head has arrived last

    # --- uvicorn's hooks ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._start_head_timer()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may go on to a pipelined request
        self._follow_request()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._stop_timers()  # the connection is the WebSocket protocol's from here
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        if self.cycle is not None and not self.cycle.response_started:
            self.cycle.scope["state"][CLIENT_GONE] = True
        super().connection_lost(exc)

    # --- the timers -----------------------------------------------------------------------------------------
    def _follow_request(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle:  # a request's head has arrived
            self._timed_cycle = cycle
            self._cancel_head_timer()
        if cycle is not None and cycle.more_body and not cycle.response_complete and not cycle.disconnected:
            self._start_body_timer()  # again on every read: it bounds a pause, not the whole body
        else:
            self._cancel_body_timer()

    def _start_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _start_body_timer(self) -> None:
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _stop_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        log.info("request_timeout", phase="headers", timeout_s=self.header_timeout_s, peer=self._peer())
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_complete or self.transport.is_closing():
            return
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._start_body_timer()  # the wait is ours, not the client's
            return
        log.info("request_timeout", phase="body", timeout_s=self.body_timeout_s, peer=self._peer())
        cycle.scope["state"][TIMED_OUT] = True
        if not cycle.response_started:
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_TIMEOUT_BODY)).encode()),
                (b"connection", b"close"),
            ]
            try:
                for event in (
                    h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"),
                    h11.Data(data=_TIMEOUT_BODY),
                    h11.EndOfMessage(),
                ):
                    self.transport.write(self.conn.send(event) or b"")
            except h11.LocalProtocolError:
                pass
        # The app, still waiting for the body, hears that the client is gone; what it answers goes nowhere.
        cycle.disconnected = True
        cycle.message_event.set()
        self.transport.close()

    def _peer(self) -> str | None:
        return f"{self.client[0]}:{self.client[1]}" if self.client else None


def tune_collector() -> None:
    """For a long-running API process, once it is built: what exists now (the app, the container, compiled
    routes, caches) is moved out of the collector's reach, and the youngest generation is collected less
    often. With 1,000 SSE streams open on one process, full collections took 140-375 ms and freed nothing,
    stalling every stream at once (chunk -> client p99 53.8 ms at 2 chunks/s per stream; 8.0 ms tuned:
    ``python -m bench.pipeline --layout open``). Not for processes that build apps over and over (tests):
    what is frozen is never collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
