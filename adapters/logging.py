"""The one logger setup: structlog, JSON lines on stderr, correlation ids bound per request/command.

Every line goes through one stdlib handler whose formatter is structlog's ``ProcessorFormatter``: parley's
own structlog calls, and the stdlib and third-party loggers (uvicorn, httpx, transformers, warnings) alike,
come out as the same JSON with the same fields: level, logger, timestamp, the bound correlation ids, and
``trace_id``/``span_id`` while a span is current."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

__all__ = ["configure_logging", "adopt_library_logs", "add_trace_ids"]


def add_trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The current span's ids, so that a log line leads to its trace (and back)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", f"{context.trace_id:032x}")
        event_dict.setdefault("span_id", f"{context.span_id:016x}")
    return event_dict


def adopt_library_logs() -> None:
    """Libraries that install a stderr handler of their own log through the root's instead. transformers
    does so when first imported: its loaders call this after importing it."""
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()


def configure_logging(level: str = "info", json: bool = True) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_trace_ids,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)  # a library's warning is a log line too, not a bare line on stderr
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # a server set up before may have given them
        library = logging.getLogger(name)  # handlers of their own, or cut them off: through the root's, always
        for old in list(library.handlers):
            library.removeHandler(old)
        library.propagate, library.disabled = True, False
        library.setLevel(logging.NOTSET)
    for noisy in ("nats", "uvicorn.access", "httpx", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    adopt_library_logs()
