"""The in-cluster subscriber contract (README, "Subscribing to events inside the cluster"), checked
against the real relay on real Postgres and NATS: the subject shape, the ``Nats-Msg-Id`` header, sealed
personal fields, JetStream's dedup of a re-publish, and the README's example consumer itself, run as a
program against one tenant's subject."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from application.context import CommandContext
from application.identity import Principal
from domain.identity import tenant_id_for
from schema.contract import personal_fields
from schema.events import SECRET_SUFFIXES, EventEnvelope
from tests.integration.procs import PASSWORD, wait_relayed
from workers.bootstrap import Container
from workers.relay import Relay

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"<!-- subscriber-example:start -->\s*```python\n(.*?)```\s*<!-- subscriber-example:end -->", re.S)
TOKEN = r"[A-Za-z0-9_-]+"


def readme_example() -> str:
    found = EXAMPLE.search(README.read_text())
    assert found, "README has no subscriber example between its markers"
    return found.group(1)


@pytest.fixture
async def relayed(container: Container) -> AsyncIterator[Any]:
    """The real relay, running as a task on the test's namespace; yields its JetStream context."""
    js = await container.connect_nats("test-subscriber-contract")
    stop = asyncio.Event()
    task = asyncio.create_task(
        Relay(store=container.store, engine=container.engine, js=js, subjects=container.subjects).run(stop)
    )
    yield js
    stop.set()
    await asyncio.gather(task, return_exceptions=True)


async def two_tenants(c: Container) -> tuple[str, str]:
    """Users and chats in the default tenant and in a second one, through the application services."""
    home = str(tenant_id_for(c.settings.default_tenant))
    admin = await c.identity.register(
        CommandContext(tenant_id=home, actor="anonymous"),
        tenant=home,
        email="ada@example.test",
        password=PASSWORD,
        name="Ada Lovelace",
    )
    ada = Principal(tenant_id=home, user_id=admin.id, role="admin", via="token")
    await c.chats.create(CommandContext(tenant_id=home, actor=ada.actor), ada, title="Analytical engine")

    acme = str((await c.identity.ensure_tenant("acme", "Acme")).id)
    invitation = await c.identity.invite(
        CommandContext(tenant_id="", actor="system"), None, tenant="acme", email="grace@acme.test", role="admin"
    )
    joined = await c.identity.accept_invitation(
        CommandContext(tenant_id=acme, actor="anonymous"),
        token=invitation.token,
        name="Grace Hopper",
        password=PASSWORD,
    )
    grace = Principal(tenant_id=acme, user_id=joined.id, role="admin", via="token")
    await c.chats.create(CommandContext(tenant_id=acme, actor=grace.actor), grace, title="Compilers")

    await c.chats.create(CommandContext(tenant_id=home, actor=ada.actor), ada, title="Notes on the engine")
    return home, acme


async def stream_messages(js: Any, stream: str) -> list[Any]:
    state = (await js.stream_info(stream)).state
    return (
        [await js.get_msg(stream, seq) for seq in range(state.first_seq, state.last_seq + 1)] if state.messages else []
    )


async def run_example(c: Container, tmp_path: Path, subject: str, durable: str, **env: str) -> list[str]:
    """The README's example as a program of its own: the lines it printed."""
    env = {"NATS_URL": c.settings.nats_url or "", "PARLEY_SUBJECT": subject, "DURABLE": durable, **env}
    program = tmp_path / "subscriber.py"
    program.write_text(readme_example())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(program),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()


async def test_an_in_cluster_subscriber_gets_what_the_readme_promises(
    container: Container, relayed: Any, tmp_path: Path
) -> None:
    c, js = container, relayed
    home, acme = await two_tenants(c)
    await wait_relayed(c)
    events: list[EventEnvelope] = await c.store.call(c.store.read, 1, 1_000_000)
    assert {e.tenant_id for e in events} >= {home, acme}

    # On the stream: every event once, in id order, its subject of the documented shape, Nats-Msg-Id = id.
    stream = c.subjects.events_stream
    assert stream == f"{c.settings.namespace.upper()}_EVENTS"
    messages = await stream_messages(js, stream)
    envelopes = [json.loads(m.data) for m in messages]
    assert [e["id"] for e in envelopes] == [e.id for e in events]
    ns = re.escape(c.settings.namespace)
    for message, envelope in zip(messages, envelopes, strict=True):
        assert (message.headers or {}).get("Nats-Msg-Id") == str(envelope["id"])
        tenant = envelope["tenant_id"] or "platform"
        assert (
            message.subject == f"{c.settings.namespace}.events.{tenant}.{envelope['aggregate_type']}.{envelope['type']}"
        )
        assert re.fullmatch(rf"{ns}\.events\.{TOKEN}\.{TOKEN}\.{TOKEN}", message.subject)
        assert envelope["schema_version"] == 1
        assert not [k for k in envelope["data"] if k.endswith(SECRET_SUFFIXES)], envelope
        for name in personal_fields(envelope["type"]) & envelope["data"].keys():
            value = envelope["data"][name]
            assert value is None or (isinstance(value, str) and value.startswith("enc:v1:")), (envelope["type"], name)

    # Personal fields arrive sealed: the names, e-mails and chat titles above never appear in the clear.
    registered = [e for e in envelopes if e["type"] == "UserRegistered"]
    assert len(registered) == 2
    assert all(
        e["data"]["email"].startswith("enc:v1:s:") and e["data"]["name"].startswith("enc:v1:s:") for e in registered
    )
    titles = [e["data"]["title"] for e in envelopes if e["type"] == "ChatCreated"]
    assert len(titles) == 3 and all(t.startswith("enc:v1:s:") for t in titles)
    raw = b"".join(m.data for m in messages)
    for clear in (
        b"Ada Lovelace",
        b"ada@example.test",
        b"Grace Hopper",
        b"grace@acme.test",
        b"Compilers",
        b"Analytical",
    ):
        assert clear not in raw

    # A relay restart publishes an id again: within the duplicate window JetStream drops it.
    again = next(m for m in messages if json.loads(m.data)["tenant_id"] == home)
    ack = await js.publish(again.subject, again.data, headers={"Nats-Msg-Id": again.headers["Nats-Msg-Id"]})
    assert ack.duplicate
    assert (await js.stream_info(stream)).state.messages == len(events)

    # Past the window the stream would keep the copy: one kept (under another message id) is skipped by the
    # example, which goes by the envelope's id.
    await js.publish(again.subject, again.data, headers={"Nats-Msg-Id": f"late-{uuid.uuid4()}"})
    assert (await js.stream_info(stream)).state.messages == len(events) + 1

    # The README's example on one tenant's subject: that tenant's events, each once, in id order.
    printed = await run_example(c, tmp_path, c.subjects.events_of_tenant(home), "readme-example", IDLE_S="2")
    expected = [f"{e.id} {e.type} {e.tenant_id}" for e in events if e.tenant_id == home]
    assert printed == expected
    assert any(line.endswith(f" ChatCreated {home}") for line in printed)

    # Acked: the same durable, started again, has nothing new; MAX_EVENTS stops it after that many.
    assert await run_example(c, tmp_path, c.subjects.events_of_tenant(home), "readme-example", IDLE_S="1") == []
    chat_subject = c.subjects.events_of_type("Chat", "ChatCreated")
    first_two = await run_example(c, tmp_path, chat_subject, "readme-example-chats", MAX_EVENTS="2", IDLE_S="5")
    chats = [f"{e.id} {e.type} {e.tenant_id}" for e in events if e.type == "ChatCreated"]
    assert first_two == chats[:2] and {line.split()[2] for line in chats} == {home, acme}


def test_the_readme_example_is_short() -> None:
    assert len(readme_example().strip().splitlines()) <= 40
