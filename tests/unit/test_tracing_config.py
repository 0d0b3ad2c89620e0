"""Tracing is configured by the standard OTEL_* variables: off unless an exporter is configured, and a bad
value is a start error that names every problem at once (the SDK itself would only warn and trace otherwise)."""

from __future__ import annotations

import pytest

from adapters.eventstore import command_name
from adapters.settings import SettingsError
from adapters.tracing import configure_tracing, enabled


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SERVICE_NAME": "parley-x", "OTEL_TRACES_SAMPLER": "always_on"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
    ],
)
def test_tracing_is_off_without_an_exporter(env: dict[str, str]) -> None:
    assert configure_tracing("parley-test", env) is False
    assert not enabled()


def test_bad_otel_values_are_refused_all_at_once() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp,zipkin",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.5",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    with pytest.raises(SettingsError) as refused:
        configure_tracing("parley-test", env)
    problems = "\n".join(refused.value.problems)
    for name in ("'zipkin'", "OTEL_TRACES_SAMPLER_ARG='1.5'", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "'grpc'"):
        assert name in problems
    with pytest.raises(SettingsError, match="OTEL_TRACES_SAMPLER='sometimes'"):
        configure_tracing("parley-test", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "sometimes"})
    assert not enabled()


class Chats:
    """As an application service hands its command to the event store: a closure of the use case."""

    def send_message(self) -> object:
        def command() -> None: ...

        return command

    def archive(self) -> object:
        return lambda: None


def test_a_command_span_is_named_after_the_service_method() -> None:
    assert command_name(Chats().send_message()) == "Chats.send_message"  # type: ignore[arg-type]
    assert command_name(Chats().archive()) == "Chats.archive"  # type: ignore[arg-type]
