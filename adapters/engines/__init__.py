"""Inference engines behind the one ``application.engines.Engine`` interface: the local transformers
engine, any OpenAI-compatible server, Ollama, and the diagnostic echo engine.

Importing this package does not import torch: the local engine does so when it loads its first model."""

from __future__ import annotations

from pathlib import Path

from adapters.engines.echo import EchoEngine
from adapters.engines.local import DEFAULT_LOCAL_MODEL, LocalEngine
from adapters.engines.ollama import OllamaEngine
from adapters.engines.openai import OpenAIEngine
from application.engines import Engine

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "ENGINE_KINDS",
    "EchoEngine",
    "LocalEngine",
    "OllamaEngine",
    "OpenAIEngine",
    "build_engine",
]

ENGINE_KINDS = ("local", "openai", "ollama", "echo")


def build_engine(
    kind: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    home: Path,
    device: str | None = None,
) -> Engine:
    """The engine for a provider kind: "local" (models under ``home``, on ``device``), "openai" and
    "ollama" (at ``base_url``, with ``api_key``), "echo" (no model)."""
    if kind == "local":
        return LocalEngine(home=home, device=device)
    if kind in ("openai", "ollama"):
        if not base_url:
            raise ValueError(f"a {kind} engine needs a base_url")
        if kind == "openai":
            return OpenAIEngine(base_url, api_key=api_key)
        return OllamaEngine(base_url, api_key=api_key)
    if kind == "echo":
        return EchoEngine()
    raise ValueError(f"unknown engine kind {kind!r}; expected one of {', '.join(ENGINE_KINDS)}")
