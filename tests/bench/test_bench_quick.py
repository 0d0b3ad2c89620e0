"""Every benchmark keeps running: each ``bench/`` script's quick form, the command lines ``make bench`` runs,
as a subprocess on the current defaults (each benchmark sets its own tenant's limits), its exit status and
a few of the figures it prints checked: numbers above zero, every stream exact, no HTTP transport errors
and no non-2xx answers.

Much of a quick form's time is starting engines and processes and waiting on them (paced streams,
projectors catching up, processes stopping), so the forms run two at a time, the longest first (the
knowledge benchmark alone takes a third of the whole). See bench/README.md for their times.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_HOME = Path(os.environ.get("PARLEY_TEST_MODEL_HOME", Path(tempfile.gettempdir()) / "parley-test-models"))
"""The converted local model that tests/integration/test_engines.py caches: only the first run on a machine
converts the GGUF."""

FORMS: dict[str, list[str]] = {  # the longest first; fsync off where a form can (what is checked is that it runs)
    "knowledge": ["--quick", "--fast"],
    "privacy": ["--quick", "--fast"],
    "openai_overhead": ["--smoke", "--targets", "direct,parley"],  # LiteLLM needs a venv from a download
    "pipeline": ["--smoke"],  # both layouts
    "webhooks": ["--quick", "--fast"],
    "failover": ["--quick", "--fast"],
    "spine": ["--quick", "--fast"],
    "engine_cpu": ["--smoke", "--home", str(MODEL_HOME)],
    "quota": ["--quick", "--fast"],
    "redis_failover": ["--quick", "--fast"],
    "instant_upstream": ["--smoke"],
    "commands_http": ["--smoke"],
    "tracing": ["--smoke", "--fast"],
    "nats_cluster": ["--quick", "--fast"],
    "message_search": ["--smoke", "--fast"],
}
FORM_TIMEOUT_S = 240
AT_ONCE = 2


@dataclass
class Ran:
    returncode: int
    output: str
    seconds: float

    def explain(self) -> str:
        return f"exit status {self.returncode} after {self.seconds:.0f} s; output ends:\n{self.output[-4000:]}"


def run_form(name: str) -> Ran:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["HF_HUB_OFFLINE"] = "1"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", *FORMS[name]],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=FORM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else exc.output or ""
        return Ran(-1, output + f"\n(stopped after {FORM_TIMEOUT_S} s)", time.monotonic() - started)
    return Ran(done.returncode, done.stdout, time.monotonic() - started)


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[dict[str, Future[Ran]]]:
    """The selected forms, started two at a time in ``FORMS`` order when the first test asks."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "name" in item.callspec.params
    }
    with ThreadPoolExecutor(max_workers=AT_ONCE, thread_name_prefix="bench") as pool:
        yield {name: pool.submit(run_form, name) for name in FORMS if name in selected}


# --- reading the figures -----------------------------------------------------------------------------------
def number(text: str) -> float:
    return float(text.replace(",", "").rstrip("%"))


def figure(output: str, name: str) -> str:
    """The value of a report row (``figure  value  note``) whose figure is ``name``."""
    for line in output.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 2] == "  ":
            return re.split(r"\s{2,}", line[len(name) :].strip())[0]
    raise AssertionError(f"no figure {name!r} in the output")


def row_numbers(output: str, name: str) -> list[float]:
    """The numbers of a table row that starts with ``name``."""
    for line in output.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 2] == "  ":
            return [number(v) for v in line[len(name) :].split()]
    raise AssertionError(f"no row {name!r} in the output")


def positive(output: str, name: str) -> float:
    value = number(figure(output, name).split("/")[0])
    assert value > 0, f"{name}: {value}"
    return value


def rows_of(output: str, pattern: str) -> list[re.Match[str]]:
    return [m for line in output.splitlines() if (m := re.match(pattern, line))]


def all_exact(output: str, pattern: str, expected_rows: int) -> None:
    rows = rows_of(output, pattern + r"\s{2,}(\d+)/(\d+)")
    assert len(rows) == expected_rows, [m[0] for m in rows]
    for m in rows:
        assert int(m[1]) == int(m[2]) > 0, m[0]


def check_knowledge(out: str) -> None:
    positive(out, "ingest documents/s")
    positive(out, "projector chunks/s (embed+index)")
    assert positive(out, "HNSW ef_search 200 recall@10") <= 1.0


def check_openai_overhead(out: str) -> None:
    for target in ("direct", "parley"):
        counts = rows_of(
            out,
            rf"errors, {target}: (\d+) transport errors, (\d+) non-2xx answers, (\d+) wrong answers, "
            r"of ([\d,]+) requests",
        )
        assert len(counts) == 1, f"no error counts for {target}"
        transport, non_2xx, wrong, requests = (number(v) for v in counts[0].groups())
        assert (transport, non_2xx, wrong) == (0, 0, 0) and requests > 0, counts[0][0]
    # p50 and p99 of parley's six rows: whole answers, first chunks and ends, at 1 and at 4 clients
    latencies = rows_of(out, r".*\s{2,}parley\s+([\d.]+)\s+([\d.]+)\s+\+")
    assert len(latencies) == 6, [m[0] for m in latencies]
    assert all(float(m[1]) > 0 and float(m[2]) > 0 for m in latencies)


def check_pipeline(out: str) -> None:
    for layout in ("inproc", "procs"):
        all_exact(out, rf"{layout}, .*: streams exact", 4)  # full speed and paced, 1 and 4 streams
        for rate in rows_of(out, rf"({layout}, .*: tokens/s delivered)"):
            positive(out, rate[1])
        positive(out, f"{layout}, full speed, 1 stream: send -> first token p50 / p99 (ms)")
        assert figure(out, f"{layout}: HTTP transport errors") == "0"
        assert figure(out, f"{layout}: HTTP non-2xx answers") == "0"


def check_spine(out: str) -> None:
    positive(out, "append events/s (batched)")
    positive(out, "lag commit -> rm_users p50 (ms)")
    positive(out, "rebuild identity events/s")


def check_engine_cpu(out: str) -> None:
    for row in ("1 stream: LocalEngine", "4 streams: LocalEngine concurrent", "4 streams: model.generate batch of 4"):
        tokens, seconds, rate = row_numbers(out, row)[:3]
        assert tokens > 0 and seconds > 0 and rate > 0, row


def check_quota(out: str) -> None:
    positive(out, "send_message p50, quotas on (ms)")
    positive(out, "ledger reserve+settle/s, 64 caller(s)")
    assert figure(out, "ledger counters consistent") == "yes"
    positive(out, "report by user p50/p99 (ms)")


def check_instant_upstream(out: str) -> None:
    assert "errors: 0 transport errors, 0 non-2xx answers, 0 wrong answers" in out
    for mode in ("not streamed", "streamed"):
        rate = rows_of(out, rf"requests/s, {mode}: ([\d,]+)")
        assert rate and number(rate[0][1]) > 0, mode


def check_commands_http(out: str) -> None:
    for row in ("CreateChat, HTTP, 4 clients", "SendMessage, HTTP, 4 clients", "raw eventsourcing, 16 threads"):
        found = rows_of(out, rf"{re.escape(row)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(.*)$")
        assert len(found) == 1, f"no row {row!r}"
        rate, p50, p99 = (float(v) for v in found[0].groups()[:3])
        assert rate > 0 and 0 < p50 <= p99, found[0][0]
        assert found[0][4] == "none", f"{row}: transport errors or non-2xx answers: {found[0][4]}"
    assert "FAILED" not in out


def check_privacy(out: str) -> None:
    for command in ("CreateChat", "SendMessage"):
        for side in ("on", "off"):
            positive(out, f"{command}/s, 16 caller(s), encryption {side}")
    for side in ("on", "off"):
        positive(out, f"rebuild chats events/s, encryption {side}")
    positive(out, "export MB/s")
    positive(out, "erase_user request (ms)")
    positive(out, "erase -> read models purged (ms)")
    assert figure(out, "errors") == "0", "failed commands or checks"


def check_webhooks(out: str) -> None:
    positive(out, "backlog deliveries/s")
    positive(out, "backlog webhooks CPU s per 1,000 deliveries")
    for phase in (r"per-user, [\d,]+ events/s", r"fan-out x\d+, [\d,]+ events/s"):
        for row in ("latency p50 (ms)", "latency p99 (ms)", "deliveries/s"):
            found = rows_of(out, rf"({phase} {re.escape(row)})\s{{2,}}([\d.,]+)")
            assert found and all(number(m[2]) > 0 for m in found), f"no {phase} {row} above zero"
    for label in ("alone", "beside dead + slow"):
        positive(out, f"healthy endpoint p50 (ms), {label}")
        positive(out, f"healthy endpoint p99 (ms), {label}")
    assert figure(out, "deliveries lost") == "0"
    assert figure(out, "deliveries refused by the receiver") == "0"
    assert figure(out, "errors") == "0", "lost deliveries, failed signatures or failed commands"


def check_nats_cluster(out: str) -> None:
    for replicas in ("R1", "R3"):
        positive(out, f"SendMessage/s accepted, {replicas}")
        positive(out, f"generations/s completed, {replicas}")
    for kind in ("events stream leader", "another node"):
        positive(out, f"node killed ({kind}): to a generation completed (s)")
        positive(out, f"node killed ({kind}): to the relay publishing (s)")
    assert figure(out, "errors") == "0", "lost or duplicated events, jobs left in the queue, failed generations"


def check_failover(out: str) -> None:
    for kind in ("relay", "projector", "projector, restarted alone", "worker", "api"):
        positive(out, f"{kind}: kill -9 -> progress (s)")
    assert figure(out, "lost or applied twice") == "none"


def check_redis_failover(out: str) -> None:
    for row in ("reservations again after the kill", "sentinels name the new master"):
        positive(out, f"{row} min/median/max (s)")
    assert figure(out, "sends failed outright") == "0"
    assert figure(out, "ledger counter equals the event store") == "yes"


def check_tracing(out: str) -> None:
    for command in ("CreateChat", "SendMessage"):
        for variant in ("off", "on", "on, 10% sampled"):
            row = f"{command}, tracing {variant}"
            found = rows_of(out, rf"{re.escape(row)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s+([\d.]+)$")
            assert len(found) == 1, f"no row {row!r}"
            rate, p50, p99, failures, cpu_ms = found[0].groups()
            assert float(rate) > 0 and 0 < float(p50) <= float(p99) and float(cpu_ms) > 0, found[0][0]
            assert failures == "none", f"{row}: transport errors or non-2xx answers: {failures}"
    assert number(figure(out, "spans exported per command, tracing on")) >= 1
    assert "FAILED" not in out


def check_message_search(out: str) -> None:
    assert positive(out, "messages loaded") == 4_000
    p50, p95, p99 = (number(v) for v in figure(out, "search p50/p95/p99 ms, all").split("/"))
    assert 0 < p50 <= p95 <= p99
    assert rows_of(out, r"plan of '\w+' \(commonest word\)\s+bitmap scan of the GIN index"), "the GIN index was not used"


CHECKS: dict[str, Callable[[str], None]] = {
    "knowledge": check_knowledge,
    "privacy": check_privacy,
    "openai_overhead": check_openai_overhead,
    "pipeline": check_pipeline,
    "webhooks": check_webhooks,
    "spine": check_spine,
    "engine_cpu": check_engine_cpu,
    "quota": check_quota,
    "redis_failover": check_redis_failover,
    "instant_upstream": check_instant_upstream,
    "commands_http": check_commands_http,
    "tracing": check_tracing,
    "nats_cluster": check_nats_cluster,
    "failover": check_failover,
    "message_search": check_message_search,
}


# --- the tests ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FORMS))
def test_quick_form_runs_and_reports_its_figures(name: str, runs: dict[str, Future[Ran]]) -> None:
    ran = runs[name].result()
    print(f"python -m bench.{name} {' '.join(FORMS[name])}: {ran.seconds:.0f} s")
    assert ran.returncode == 0, ran.explain()
    try:
        CHECKS[name](ran.output)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{ran.explain()}") from None


def test_every_bench_script_has_a_quick_form_that_make_bench_runs() -> None:
    scripts = {p.stem for p in (REPO_ROOT / "bench").glob("*.py") if p.stem != "__init__"}
    assert scripts == set(FORMS) == set(CHECKS)
    recipe = (REPO_ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    commands = {m[1]: m[2].split() for m in re.finditer(r"-m bench\.(\w+)([^\n]*)", recipe)}
    for name, args in FORMS.items():
        # The model cache is the tests' own; fsync off only saves the test time.
        flags = [a for a in args if a.startswith("--") and a not in ("--home", "--fast")]
        assert name in commands and set(flags) <= set(commands[name]), f"make bench runs no bench.{name} {flags}"
