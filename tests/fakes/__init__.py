"""Fakes for what lies outside parley: remote LLM providers, spoken to over their real wire protocols."""

from tests.fakes.upstreams import FakeUpstreams, RecordedRequest, fake_upstreams

__all__ = ["FakeUpstreams", "RecordedRequest", "fake_upstreams"]
