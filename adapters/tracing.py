"""OpenTelemetry traces: one message sent is one trace, across the API, the relay, the projectors and the
workers.

Configured by the standard ``OTEL_*`` variables. Tracing is on in a process only where an exporter is
configured: ``OTEL_TRACES_EXPORTER=otlp`` (or ``console``), or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) with no exporter named;
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off. Off, no SDK provider is installed:
the API's no-op tracer answers and the helpers here return before doing anything. On, spans leave over
OTLP/HTTP in batches (``OTEL_BSP_*``), sampled as ``OTEL_TRACES_SAMPLER`` says (parent-based by default, so a
trace sampled at the edge is sampled everywhere), the process named ``OTEL_SERVICE_NAME`` or its own name
(``parley-api``, ``parley-relay``...).

Trace context crosses processes two ways: in each event's metadata (``traceparent``: the span of the command
that recorded it, so the relay and every projector continue it), and in NATS headers (``traceparent`` on the
relay's events and jobs, and on the worker's token chunks, so the worker and the SSE reader continue it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from adapters.settings import SettingsError

__all__ = [
    "SERVICE_NAMES",
    "SpanKind",
    "configure_tracing",
    "continued",
    "current_traceparent",
    "enabled",
    "end_span",
    "projector_apply",
    "shutdown_tracing",
    "span",
    "start_span",
    "traceparent_of",
]

SERVICE_NAMES = {
    "api": "parley-api",
    "relay": "parley-relay",
    "project": "parley-projector",
    "worker": "parley-worker",
    "ingest": "parley-ingest",
    "webhooks": "parley-webhooks",
}
"""Each ``parley`` process's service name, unless ``OTEL_SERVICE_NAME`` names one."""

_EXPORTERS = ("otlp", "console", "none")
_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)

tracer = trace.get_tracer("parley")
"""The API's proxy tracer: the SDK's once ``configure_tracing`` installed it, a no-op one until then."""

_propagator = TraceContextTextMapPropagator()
_enabled = False
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def enabled() -> bool:
    return _enabled


def _exporters(env: Mapping[str, str]) -> list[str]:
    named = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if named:
        return named
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return ["otlp"] if endpoint else []


def _check(env: Mapping[str, str], exporters: list[str]) -> None:
    """What the SDK would only warn about (and then trace otherwise than asked), refused at start."""
    problems = [f"OTEL_TRACES_EXPORTER={e!r} is not one of {', '.join(_EXPORTERS)}" for e in exporters if e not in _EXPORTERS]
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in _SAMPLERS:
        problems.append(f"OTEL_TRACES_SAMPLER={sampler!r} is not one of {', '.join(_SAMPLERS)}")
    elif sampler.endswith("traceidratio"):
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            problems.append(f"OTEL_TRACES_SAMPLER_ARG={arg!r} must be a ratio from 0 to 1")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = env.get(name)
        if value and not value.startswith(("http://", "https://")):
            problems.append(f"{name}={value!r} must be an http:// or https:// URL (OTLP over HTTP)")
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        problems.append(f"OTLP protocol {protocol!r}: parley exports over http/protobuf only")
    if problems:
        raise SettingsError(problems)


def configure_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Install the SDK's tracer provider for this process if an exporter is configured; whether tracing is
    on. Called once at a process's start, after logging is set up."""
    global _enabled
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporters(env)
    _check(env, exporters)
    exporters = [e for e in exporters if e != "none"]
    if not exporters:
        return False

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service_name}))
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":  # endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter(service_name=service_name)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # flushed and shut down at exit (the SDK's atexit hook)
    _enabled = True
    return True


def shutdown_tracing() -> None:
    """Export what is still buffered, at a process's orderly end. The SDK's own exit hook does too, but
    ``parley api`` never reaches it: uvicorn ends the process by raising the stop signal again once it has
    shut down."""
    shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
    if _enabled and shutdown is not None:
        shutdown()


# --- context ----------------------------------------------------------------------------------------------
def traceparent_of(s: Span) -> str | None:
    """``s``'s W3C traceparent, or None for the invalid span."""
    c = s.get_span_context()
    if not c.is_valid:
        return None
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The current span's traceparent (None when no span is current, as always while tracing is off)."""
    return traceparent_of(trace.get_current_span()) if _enabled else None


def _context(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    ctx = _propagator.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def _sampled(traceparent: str | None) -> bool:
    if not traceparent or len(traceparent) != 55:
        return False
    try:
        return bool(int(traceparent[53:], 16) & 1)
    except ValueError:
        return False


# --- spans ------------------------------------------------------------------------------------------------
def span(
    name: str,
    *,
    parent: str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: Iterable[Link] = (),
) -> contextlib.AbstractContextManager[Span | None]:
    """A span made current for the block: a child of ``parent`` (a traceparent from an event or a message)
    where given, else of the current span; nothing at all while tracing is off."""
    if not _enabled:
        return _NO_SPAN
    return tracer.start_as_current_span(
        name, context=_context(parent), kind=kind, attributes=dict(attributes or {}), links=list(links)
    )


def start_span(
    name: str,
    parent: str | None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    link_current: bool = False,
) -> Span | None:
    """A span that continues the trace of ``parent`` (not made current; end it with ``end_span``); None
    while tracing is off or when there is no trace to continue. ``link_current``: linked to the span
    current here (the SSE reader's HTTP request)."""
    if not _enabled:
        return None
    ctx = _context(parent)
    if ctx is None:
        return None
    links = []
    if link_current:
        here = trace.get_current_span().get_span_context()
        if here.is_valid:
            links.append(Link(here))
    return tracer.start_span(name, context=ctx, kind=kind, attributes=dict(attributes or {}), links=links)


def end_span(s: Span | None, error: BaseException | None = None) -> None:
    if s is None:
        return
    if error is not None:
        s.record_exception(error)
        s.set_status(Status(StatusCode.ERROR, type(error).__name__))
    s.end()


MAX_CONTINUED = 64
"""Traces one batch continues at most (a projector's batch may hold events of hundreds of requests)."""


@contextlib.contextmanager
def continued(
    name: str, traceparents: Iterable[str | None], *, attributes: Mapping[str, Any] | None = None
) -> Iterator[list[Span]]:
    """One span in each sampled trace among ``traceparents`` (at most ``MAX_CONTINUED``), all covering the
    block: a batch applied at once (a projector's) shows in the trace of each request it holds work of."""
    if not _enabled:
        yield []
        return
    parents = list(dict.fromkeys(tp for tp in traceparents if _sampled(tp)))[:MAX_CONTINUED]
    spans = [s for tp in parents if (s := start_span(name, tp, attributes=attributes)) is not None]
    try:
        yield spans
    except BaseException as exc:
        for s in spans:
            end_span(s, exc)
        raise
    for s in spans:
        s.end()


def projector_apply(projector: str, events: Sequence[Any]) -> contextlib.AbstractContextManager[list[Span]]:
    """A projector's apply of ``events`` (envelopes), in the trace of each request they came from
    (``projections.runtime.observe_applies``)."""
    return continued(
        f"project {projector}",
        (e.traceparent for e in events),
        attributes={"parley.projector": projector, "parley.events": len(events)},
    )
