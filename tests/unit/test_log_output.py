"""Every line on stderr is the same structlog JSON: parley's own lines and those of the stdlib and third-party
loggers (uvicorn, transformers, warnings), with the bound correlation id and, inside a span, its trace ids."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from adapters.logging import configure_logging


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # Set up in the test itself, not here: the stderr that capsys captures in the test is not yet in place.

    def lines() -> list[dict[str, Any]]:
        text = capsys.readouterr().err
        return [json.loads(line) for line in text.splitlines()]  # a plain line fails here

    yield lines
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_a_stdlib_log_line_comes_out_as_json_with_trace_and_correlation_ids(json_logs: Any) -> None:
    configure_logging("info", json=True)
    tracer = TracerProvider().get_tracer("test")  # not installed globally: the current span is what counts
    with structlog.contextvars.bound_contextvars(correlation_id="c0ffee"):
        with tracer.start_as_current_span("request") as span:
            logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
            structlog.get_logger("parley.test").info("request_done", status=200)
        logging.getLogger("httpx").warning("outside any span")
    uvicorn, ours, outside = json_logs()

    context = span.get_span_context()
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    assert uvicorn["event"] == "Started server process [42]"
    assert (uvicorn["logger"], uvicorn["level"]) == ("uvicorn.error", "info")
    assert (uvicorn["trace_id"], uvicorn["span_id"], uvicorn["correlation_id"]) == (trace_id, span_id, "c0ffee")
    assert (ours["event"], ours["status"], ours["logger"]) == ("request_done", 200, "parley.test")
    assert (ours["trace_id"], ours["span_id"], ours["correlation_id"]) == (trace_id, span_id, "c0ffee")
    assert "trace_id" not in outside and outside["correlation_id"] == "c0ffee" and "timestamp" in outside


def test_transformers_warnings_and_exceptions_come_out_as_json(json_logs: Any) -> None:
    hf_logging = pytest.importorskip("transformers.utils.logging")
    from adapters.logging import adopt_library_logs

    configure_logging("info", json=True)
    adopt_library_logs()  # as the local engine's loaders do once they have imported transformers
    hf_logging.get_logger("transformers.modeling_utils").warning("weights converted")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("some.library").exception("it failed")
    hf, warning, failure = json_logs()
    assert (hf["logger"], hf["event"], hf["level"]) == ("transformers.modeling_utils", "weights converted", "warning")
    assert warning["logger"] == "py.warnings" and "a library's warning" in warning["event"]
    assert failure["event"] == "it failed" and "ValueError: bad" in failure["exception"]
