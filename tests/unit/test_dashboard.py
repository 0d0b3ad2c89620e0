"""The Grafana dashboard (ops/grafana/parley.json) charts only metrics that parley exposes, under their exact
exposition names, and README's metrics table documents every metric there is."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from adapters.metrics import Metrics, WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exposed(registry: CollectorRegistry) -> dict[str, str]:
    """Every series name the registry exposes (``parley_x_total``, ``parley_y_bucket``...) -> its metric."""
    names = {}
    for family in registry.collect():
        for suffix in _SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
    return names


def registries() -> list[CollectorRegistry]:
    return [Metrics().registry, WorkerMetrics().registry]


def test_every_metric_in_the_dashboard_exists() -> None:
    dashboard = json.loads((ROOT / "ops/grafana/parley.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    charted = {name for expr in exprs for name in re.findall(r"\bparley_[a-z_]+\b", expr)}
    known: dict[str, str] = {}
    for registry in registries():
        known.update(exposed(registry))
    assert charted, "the dashboard charts nothing"
    assert not charted - set(known), f"not exposed by parley: {sorted(charted - set(known))}"
    # And every metric is charted somewhere: an operator sees what parley measures.
    assert {known[n] for n in charted} == set(known.values())


def test_every_metric_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| metric |") :]
    documented = set(re.findall(r"`(parley_[a-z_]+)`", table[: table.index("\n\n")]))
    series = {name for registry in registries() for name in exposed(registry)}
    assert documented <= series, sorted(documented - series)
    for registry in registries():
        for family in registry.collect():
            assert any(n.startswith(family.name) for n in documented), f"{family.name} is not documented"
