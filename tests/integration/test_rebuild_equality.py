"""Every read model rebuilt from the event store alone equals the one built incrementally: for every
projector ``all_projectors()`` knows, over a varied history (tenants, sign-ups, role changes, renames,
deactivations, password changes, sessions, API keys created and revoked, failed sign-ins, token misuse,
providers, models and grants, chats with branched, cancelled and deleted conversations).
Rebuilt three ways: in pages of the runtime's size (each page one batch), in pages of a few events (so a
row is created in one batch and changed in later ones), and one event at a time through ``apply`` (the
reference every ``apply_many`` must agree with). A rebuild cut short keeps only whole pages, each with its
position, and a catch-up finishes it. And ``parley rebuild`` does it from the command line, showing
progress. The same history checks the event contract: every stored event, opened, decodes into its typed
Struct and validates against the exported JSON Schema."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import replace
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import Table, select

from adapters.settings import Settings
from application.chat_exchange import parse_export, render_parley
from application.context import CommandContext
from application.conversations import LOCAL_MODEL, Outcome
from application.identity import ExternalAccount, Principal
from application.oidc import provider_settings
from application.ratings import Ratings
from application.scim import ScimGroupData, ScimUserData
from application.sharing import Shares
from domain.errors import Forbidden, ParleyError, Unauthenticated
from domain.identity import Tenant, tenant_id_for
from projections import runtime
from projections.runtime import Projector, ProjectorRunner, read_position, rebuild
from schema.contract import contract_schema, decode_data, event_types
from schema.events import EventEnvelope
from tests import corpus
from tests.conftest import Pipeline
from tests.integration.procs import run_cli
from tests.openwebui_chats import fixture_export
from workers.bootstrap import Container, all_projectors

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse 9"
Snapshot = dict[str, list[dict[str, Any]]]


async def snapshot(c: Container, tables: tuple[Table, ...] | list[Table]) -> Snapshot:
    """Every row of every table, in primary-key order (all columns where there is no key)."""
    result: Snapshot = {}
    async with c.engine.connect() as conn:
        for table in tables:
            order = list(table.primary_key.columns) or list(table.columns)
            rows = (await conn.execute(select(table).order_by(*order))).mappings()
            # Vectors come back as numpy arrays: compare them as lists.
            result[table.name] = [{k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()} for r in rows]
    return result


async def fits_the_contract(c: Container, sealed: list[EventEnvelope]) -> None:
    """Every event the real engines stored fits the event contract: each envelope read back from the event
    store, opened (the contract describes personal fields opened; they leave the store sealed), decodes
    with ``decode_data`` and validates, envelope and data, against ``contract_schema()``."""
    events = await c.store.call(c.store.open_envelopes, sealed)
    validator = Draft202012Validator(contract_schema())
    seen: Counter[str] = Counter()
    for event in events:
        decoded = decode_data(event.type, event.data)
        assert type(decoded).__name__ == event.type
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(msgspec.to_builtins(event))]
        assert errors == [], f"{event.type} #{event.id}: {errors}"
        seen[event.type] += 1
    assert len(events) > 100 and len(seen) >= 40, seen
    assert set(seen) <= set(event_types())


async def expect_refusal(call: Any) -> None:
    try:
        await call
    except (Unauthenticated, Forbidden):
        return
    raise AssertionError("expected a refusal")


async def varied_history(c: Container, *, erase: bool = True) -> None:
    """``erase``: a member of each tenant is erased at the end of the tenant's history."""
    identity = c.identity

    def ctx(tenant: str, actor: str = "anonymous") -> CommandContext:
        return CommandContext(tenant_id=tenant, actor=actor, ip="198.51.100.4", user_agent="rebuild-test/1")

    async def principal(tenant: str, email: str, password: str = PASSWORD) -> tuple[Principal, str]:
        pair = await identity.login(ctx(tenant), tenant=tenant, email=email, password=password)
        return await identity.authenticate(ctx(tenant), pair.access_token), pair.refresh_token

    await identity.create_tenant(ctx("", "system:cli"), None, slug="acme", name="Acme", domains=["acme.test"])
    await identity.create_tenant(
        ctx("", "system:cli"), None, slug="globex", name="Globex", allow_signup=False, default_role="pending"
    )
    for slug in ("acme", "globex", c.settings.default_tenant):
        tenant = str(tenant_id_for(slug))
        if slug == c.settings.default_tenant:  # the embedded start: its first sign-up is the admin
            await identity.register(ctx(tenant), tenant=slug, email=f"boss@{slug}.test", password=PASSWORD, name="Boss")
        else:  # any other tenant's first admin comes by the platform's invitation
            invitation = await identity.invite(
                ctx("", "system:cli"), None, tenant=slug, email=f"boss@{slug}.test", role="admin"
            )
            await identity.accept_invitation(ctx(""), token=invitation.token, name="Boss", password=PASSWORD)
        # An invitation issued and never accepted stays in the history as it is.
        await identity.invite(ctx("", "system:cli"), None, tenant=slug, email=f"later@{slug}.test")
        admin, _ = await principal(slug, f"boss@{slug}.test")
        as_admin = ctx(tenant, admin.actor)
        members = []
        for i, role in enumerate(("user", "premium", "guest", "pending", "user")):
            member = await identity.create_user(
                as_admin, admin, email=f"m{i}@{slug}.test", password=PASSWORD, name=f"Member {i}", role=role
            )
            members.append(member.id)
        await identity.update_user(as_admin, admin, members[0], role="premium", name="Renamed Zero")
        await identity.update_user(as_admin, admin, members[1], role="user")
        await identity.update_user(as_admin, admin, members[2], active=False)
        await identity.update_user(as_admin, admin, members[3], active=False)
        await identity.update_user(as_admin, admin, members[3], active=True, password=PASSWORD + "!")
        await identity.update_user(as_admin, admin, members[4], name="  Four  ")

        # Sessions: sign in, refresh, reuse a rotated token (misuse), change password, log out everywhere.
        member, refresh = await principal(slug, f"m0@{slug}.test")
        rotated = await identity.refresh(ctx(tenant), refresh)
        await expect_refusal(identity.refresh(ctx(tenant), refresh))
        await identity.change_password(ctx(tenant, member.actor), member, current=PASSWORD, new=PASSWORD + "?")
        await identity.logout(ctx(tenant, member.actor), member, everywhere=True)
        await expect_refusal(identity.authenticate(ctx(tenant), rotated.access_token))

        # API keys: two created, one revoked and then presented.
        kept = await identity.create_api_key(as_admin, admin, name="ci", scopes=["read"])
        revoked = await identity.create_api_key(as_admin, admin, name="laptop", scopes=["read", "write", "admin"])
        await identity.revoke_api_key(as_admin, admin, revoked.id)
        await identity.authenticate(ctx(tenant), kept.key)
        await expect_refusal(identity.authenticate(ctx(tenant), revoked.key))

        # SCIM: a token issued and one revoked (then presented); users provisioned, changed, deactivated and
        # deleted (erased); groups created, mapped to a role, their members changed, one deleted.
        scim_token = await c.scim.issue_token(as_admin, admin, name="IdP")
        doomed_token = await c.scim.issue_token(as_admin, admin, name="old IdP")
        await c.scim.revoke_token(as_admin, admin, doomed_token.id)
        await expect_refusal(c.scim.authenticate(ctx(tenant), doomed_token.token))
        idp = await c.scim.authenticate(ctx(tenant), scim_token.token)
        as_idp = ctx(tenant, idp.actor)
        provisioned = [
            await c.scim.create_user(
                as_idp, idp, ScimUserData(user_name=f"p{i}", emails=[{"value": f"p{i}@{slug}.test", "primary": True}],
                                          display_name=f"Provisioned {i}", given_name="P", family_name=str(i)),
            )
            for i in range(3)
        ]
        await c.scim.replace_user(
            as_idp, idp, provisioned[0].id, ScimUserData(user_name="p0-renamed", emails=[], display_name="Zero", active=True)
        )
        await c.scim.replace_user(as_idp, idp, provisioned[1].id, ScimUserData(user_name="p1", emails=[], active=False))
        group = await c.scim.create_group(as_idp, idp, ScimGroupData(display_name="Staff", members=[str(provisioned[0].id)]))
        await c.scim.map_group_role(as_admin, admin, group.id, "premium")
        await c.scim.replace_group(
            as_idp, idp, group.id, ScimGroupData(display_name="Staff!", members=[str(provisioned[1].id), str(provisioned[2].id)])
        )
        gone_group = await c.scim.create_group(as_idp, idp, ScimGroupData(display_name="Gone", members=[str(provisioned[2].id)]))
        await c.scim.map_group_role(as_admin, admin, gone_group.id, "guest")
        await c.scim.delete_group(as_idp, idp, gone_group.id)
        await c.scim.delete_user(as_idp, idp, provisioned[2].id)

        # Failed sign-ins: wrong password, unknown e-mail, deactivated account.
        await expect_refusal(identity.login(ctx(tenant), tenant=slug, email=f"boss@{slug}.test", password="nope"))
        await expect_refusal(identity.login(ctx(tenant), tenant=slug, email=f"ghost@{slug}.test", password="x"))
        await expect_refusal(identity.login(ctx(tenant), tenant=slug, email=f"m2@{slug}.test", password=PASSWORD))

        # LDAP sign-in: the directory configured, then changed with its sealed password kept.
        directory = {"url": "ldap://ldap.test", "bind_dn": "cn=reader,dc=test", "bind_password": "s3cret!", "search_base": "dc=test"}
        await c.ldap.configure(as_admin, admin, directory)
        del directory["bind_password"]
        await c.ldap.configure(as_admin, admin, directory | {"group_roles": {"cn=staff,dc=test": "premium"}})

        # OpenID Connect: providers registered, changed and removed; external sign-ins that create a user,
        # link a password account (by its verified e-mail) and are refused (an unverified one).
        sso_settings = provider_settings(
            name="Corp SSO", issuer="https://sso.example", client_id="parley", allowed_domains=[f"{slug}.test"]
        )
        sso = await c.oidc.register(as_admin, admin, slug="corp", settings=sso_settings, client_secret="s3cret")
        await c.oidc.change(
            as_admin, admin, sso.id, changes={"role_claim": "groups", "role_map": {"staff": "premium"}}, client_secret="n3w"
        )
        gone = await c.oidc.register(as_admin, admin, slug="old", settings=sso_settings, client_secret="s3cret")
        await c.oidc.remove(as_admin, admin, gone.id)
        for subject, email, verified in (("s-new", f"sso@{slug}.test", True), ("s-m1", f"m1@{slug}.test", True), ("s-x", f"m4@{slug}.test", False)):
            account = ExternalAccount(
                source=f"oidc:{sso.id}",
                subject=subject,
                email=email,
                email_verified=verified,
                role="premium" if subject == "s-m1" else None,
                allowed_domains=(f"{slug}.test",),
                create_role="user",
                code_prefix="OIDC",
            )
            signing_in = identity.sign_in_external(ctx(tenant), slug, account)
            await (signing_in if verified else expect_refusal(signing_in))

        # Conversations: a provider with a closed model granted and revoked, a chat whose question is
        # answered twice (a regenerated branch, the second answer cancelled), renamed and archived; a
        # chat deleted.
        await c.models.ensure_local(tenant)
        await c.models.register_provider(
            as_admin, admin, name="vllm", kind="openai", base_url="http://vllm.test/v1", api_key="sk-test"
        )
        await c.models.register_model(
            as_admin, admin, name="closed", provider="vllm", upstream_model="m-1", open_to_tenant=False
        )
        await c.models.set_grant(as_admin, admin, "closed", grant=True, user_id=str(members[0]), role=None)
        await c.models.set_grant(as_admin, admin, "closed", grant=True, user_id=None, role="premium")
        await c.models.set_grant(as_admin, admin, "closed", grant=False, user_id=None, role="premium")
        await c.models.update_model(as_admin, admin, "closed", display_name="Closed", active=False)
        chat = await c.chats.create(as_admin, admin, title="Plans")
        sent = await c.chats.send_message(as_admin, admin, chat.id, content="Hi", model=LOCAL_MODEL)
        again = await c.chats.regenerate(as_admin, admin, chat.id, sent.message_id, model=LOCAL_MODEL)
        as_worker = ctx(tenant, "system")
        for generation, status in ((sent, "completed"), (again, "cancelled")):
            await c.generations.start(as_worker, generation.generation_id, attempt=1, worker="rebuild-test")
            outcome = Outcome(status=status, text="Hello", prompt_tokens=3, completion_tokens=2, attempt=1)
            await c.generations.finish(as_worker, generation.generation_id, outcome)
        # Sharing and ratings: the chat shared (then revoked), shared publicly once the tenant allows it, and
        # copied; its answer rated, rated again with a comment, taken back and rated anew.
        shares, ratings = Shares(store=c.store), Ratings(store=c.store)
        shared = await shares.create(as_admin, admin, chat.id)
        await shares.set_public_links(as_admin, admin, True)
        await shares.create(as_admin, admin, chat.id, leaf_message_id=sent.message_id, public=True)
        await shares.copy(as_admin, admin, shared.id)
        await shares.revoke(as_admin, admin, shared.id)
        answer = sent.answer_message_id
        await ratings.rate(as_admin, admin, chat.id, answer, rating="up", reason="Accurate information")
        await ratings.rate(as_admin, admin, chat.id, answer, rating="down", comment="Too short")
        await ratings.remove(as_admin, admin, chat.id, answer)
        await ratings.rate(as_admin, admin, chat.id, again.answer_message_id, rating="up", comment="Better")
        await c.chats.update(as_admin, admin, chat.id, title="Renamed plans", archived=True)
        gone = await c.chats.create(as_admin, admin, title="Gone")
        await c.chats.delete(as_admin, admin, gone.id)

        # Organising (issue 15, part B): folders made, nested, renamed, moved and deleted with a subfolder;
        # chats filed, tagged, pinned and unpinned; chats imported from Open WebUI's export (branches,
        # tags, pinned, archived) and in parley's format into a folder path made for it, one imported twice.
        work = await c.folders.create(as_admin, admin, name="Work")
        q3 = await c.folders.create(as_admin, admin, name="Q3", parent_id=work.id)
        scratch = await c.folders.create(as_admin, admin, name="Scratch")
        await c.folders.update(as_admin, admin, q3.id, name="Q3 2026", move=True, parent_id=scratch.id)
        await c.chats.update(as_admin, admin, chat.id, folder_id=q3.id, tags=["Plans", "q3"], pinned=True)
        pinned_once = await c.chats.create(as_admin, admin, title="Pinned once")
        await c.chats.update(as_admin, admin, pinned_once.id, pinned=True, folder_id=work.id, tags=["x"])
        await c.chats.update(as_admin, admin, pinned_once.id, pinned=False, folder_id=None, tags=[])
        await c.folders.delete(as_admin, admin, scratch.id)
        owui = fixture_export()[:4]
        await c.exchange.import_chats(as_admin, admin, owui)
        await c.exchange.import_chats(as_admin, admin, owui[:1])
        _, parsed = parse_export(owui[1:2])
        await c.exchange.import_chats(as_admin, admin, render_parley([replace(parsed[0], id="p-1", folder=["Work", "Imported"])]))

        # Knowledge: a shared, renamed knowledge base with documents of several kinds (one refused, one
        # failing extraction, one deleted), a chat's own file, a knowledge base deleted with its documents.
        kb = await c.knowledge.create(as_admin, admin, name="Handbook", description="how we work")
        await c.knowledge.grant(as_admin, admin, kb.id, f"user:{members[0]}", "read")
        await c.knowledge.grant(as_admin, admin, kb.id, "role:premium", "write")
        await c.knowledge.revoke(as_admin, admin, kb.id, "role:premium")
        await c.knowledge.update(as_admin, admin, kb.id, name="Staff handbook", chunk_size=600, chunk_overlap=60)
        uploads = []
        for sample in (corpus.SAMPLES["markdown"], corpus.SAMPLES["pdf"], corpus.SAMPLES["csv"]):
            uploads.append(
                await c.knowledge.upload(
                    as_admin, admin, data=sample.data, filename=sample.filename, knowledge_id=kb.id
                )
            )
        uploads.append(
            await c.knowledge.upload(as_admin, admin, data=corpus.corrupt_pdf(), filename="bad.pdf", knowledge_id=kb.id)
        )
        with contextlib.suppress(ParleyError):
            await c.knowledge.upload(
                as_admin, admin, data=b"\x89PNG\r\n\x1a\n" + bytes(300), filename="x.png", knowledge_id=kb.id
            )
        talk = await c.chats.create(as_admin, admin, title="With a file")
        uploads.append(
            await c.knowledge.upload(
                as_admin, admin, data=corpus.SAMPLES["text"].data, filename="notes.txt", chat_id=talk.id
            )
        )
        await c.chats.update(as_admin, admin, talk.id, knowledge_ids=[str(kb.id)])
        await c.models.update_model(as_admin, admin, LOCAL_MODEL, knowledge_ids=[str(kb.id)])
        for document in uploads:  # as the ingestion worker would (it may get there first: then nothing happens)
            await c.knowledge.ingest(ctx(tenant, "system"), document.id)
        await c.knowledge.delete_document(as_admin, admin, uploads[2].id)
        scratch = await c.knowledge.create(as_admin, admin, name="Scratch")
        scrap = await c.knowledge.upload(
            as_admin, admin, data=b"Scratch notes, soon gone.", filename="s.txt", knowledge_id=scratch.id
        )
        await c.knowledge.ingest(ctx(tenant, "system"), scrap.id)
        await c.knowledge.delete(as_admin, admin, scratch.id)

        # Workspace (issue 15, part A): settings with a default model, parameters, preferences and an
        # avatar; prompts of a user (shared, renamed, one deleted) and of the tenant; a preset on a model.
        await c.user_settings.update(
            as_admin, admin, display_name="Big Boss", default_model=LOCAL_MODEL, default_params={"temperature": 0.4},
            preferences={"theme": "dark", "panes": [1, 2]},
        )
        await c.user_settings.set_avatar(as_admin, admin, b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png")
        await c.user_settings.update(as_admin, admin, default_params=None)
        await c.user_settings.remove_avatar(as_admin, admin)
        note = await c.prompts.create(as_admin, admin, command="/note", title="Note", content="Note {{what}}")
        await c.prompts.grant(as_admin, admin, note.id, f"user:{members[0]}", "read")
        await c.prompts.grant(as_admin, admin, note.id, "role:premium", "write")
        await c.prompts.revoke(as_admin, admin, note.id, "role:premium")
        await c.prompts.update(as_admin, admin, note.id, command="/memo", title="Memo", content="Memo {{what}} {{when}}")
        await c.prompts.create(as_admin, admin, command="/house", title="House", content="House {{x}}", scope="tenant")
        scrap_prompt = await c.prompts.create(as_admin, admin, command="/scrap", title="Scrap", content="gone")
        await c.prompts.delete(as_admin, admin, scrap_prompt.id)
        await c.models.register_preset(
            as_admin, admin, name="helper", base_model=LOCAL_MODEL, defaults={"system_prompt": "Be brief."},
            knowledge_ids=[str(kb.id)], open_to_tenant=False,
        )

        # Erasure: a member with a chat, an answered message and an upload of their own is erased.
        leaving, _ = await principal(slug, f"m1@{slug}.test")
        as_leaving = ctx(tenant, leaving.actor)
        their_chat = await c.chats.create(as_leaving, leaving, title="Mine alone")
        asked = await c.chats.send_message(as_leaving, leaving, their_chat.id, content="Remember me", model=LOCAL_MODEL)
        await c.generations.start(as_worker, asked.generation_id, attempt=1, worker="rebuild-test")
        await c.generations.finish(
            as_worker,
            asked.generation_id,
            Outcome(status="completed", text="I will", prompt_tokens=3, completion_tokens=2, attempt=1),
        )
        await Shares(store=c.store).create(as_leaving, leaving, their_chat.id)  # shredded with them
        await Ratings(store=c.store).rate(
            as_leaving, leaving, their_chat.id, asked.answer_message_id, rating="up", comment="Mine"
        )
        theirs = await c.knowledge.upload(
            as_leaving, leaving, data=corpus.SAMPLES["text"].data, filename="mine.txt", chat_id=their_chat.id
        )
        await c.knowledge.ingest(ctx(tenant, "system"), theirs.id)
        await c.prompts.create(as_leaving, leaving, command="/mine", title="Mine", content="Only {{me}}")
        await c.user_settings.update(as_leaving, leaving, preferences={"lang": "en"})
        theirs_folder = await c.folders.create(as_leaving, leaving, name="Mine")
        await c.chats.update(as_leaving, leaving, their_chat.id, folder_id=theirs_folder.id, tags=["private"])
        if erase:
            await identity.erase_user(as_admin, admin, members[1])

    # Self sign-up where it is open, refused where it is closed.
    await identity.register(ctx(""), tenant="acme", email="walk-in@acme.test", password=PASSWORD, name="Walk In")
    try:
        await identity.register(ctx(""), tenant="globex", email="walk-in@globex.test", password=PASSWORD, name="W")
    except ParleyError as exc:
        assert exc.code == "SIGNUP_DISABLED"

    # Tenant settings have no use case yet: change them on the aggregate, through the event store.
    def change_settings() -> None:
        tenant = c.store.get(Tenant, tenant_id_for("acme"))
        tenant.change_settings(name="Acme Corp", allow_signup=False, default_role="guest", domains=["acme.example"])
        c.store.save(tenant)

    await c.store.execute(ctx(str(tenant_id_for("acme")), "system:cli"), change_settings)


class OneAtATime:
    """``projector`` without its ``apply_many``: the runtime applies each event through ``apply``."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        self.name = projector.name
        self.tables = projector.tables
        self.sealed = getattr(projector, "sealed", False)

    def handles(self, event_type: str) -> bool:
        return self.projector.handles(event_type)

    async def apply(self, conn: Any, event: Any) -> None:
        await self.projector.apply(conn, event)


REBUILDS = ("pages", "small pages", "one event at a time")


async def test_every_read_model_rebuilt_from_the_event_store_equals_the_incremental_one(
    container: Container, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """One varied history (it takes a while to make), rebuilt every way there is: whole pages, small pages,
    one event at a time; cut short halfway and caught up; through ``parley rebuild``."""
    await varied_history(container)
    await pipeline.settle(timeout=60)
    max_id = await container.store.call(container.store.max_id)
    events = await container.store.call(container.store.read, 1, 100_000)
    assert len({e.type for e in events}) >= 15  # the history really is varied
    await fits_the_contract(container, events)
    assert len(events) <= runtime.PAGE  # "pages": the whole history is one batch

    for projector in all_projectors(container):
        if not projector.tables:  # the shredder: its effect is on keys, covered by tests/e2e/test_erasure.py
            continue
        incremental = await snapshot(container, projector.tables)
        assert any(incremental.values()), f"{projector.name} projected nothing"

        for how in REBUILDS:
            monkeypatch.setattr(runtime, "PAGE", 7 if how == "small pages" else runtime.PAGE)
            replaying: Projector = OneAtATime(projector) if how == "one event at a time" else projector

            replayed = await rebuild(replaying, engine=container.engine, store=container.store)

            assert replayed == len(events)
            assert await read_position(container.engine, projector.name) == max_id
            rebuilt = await snapshot(container, projector.tables)
            for table, rows in incremental.items():
                assert rebuilt[table] == rows, f"{projector.name}: {table} differs after a rebuild in {how}"
            monkeypatch.undo()

    await a_rebuild_cut_short_keeps_whole_pages_and_a_catch_up_finishes_it(container, monkeypatch)
    await parley_rebuild_shows_progress_and_gives_the_same_read_model(container, settings)


async def a_rebuild_cut_short_keeps_whole_pages_and_a_catch_up_finishes_it(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    max_id = await container.store.call(container.store.max_id)
    monkeypatch.setattr(runtime, "PAGE", 11)

    for projector in all_projectors(container):
        if not projector.tables:  # the shredder: its effect is on keys, covered by tests/e2e/test_erasure.py
            continue
        incremental = await snapshot(container, projector.tables)
        committed: list[int] = []
        halfway = asyncio.Event()

        def progress(
            position: int, target: int, committed: list[int] = committed, halfway: asyncio.Event = halfway
        ) -> None:
            committed.append(position)
            if position >= target // 2:
                halfway.set()

        task = asyncio.create_task(
            rebuild(projector, engine=container.engine, store=container.store, progress=progress)
        )
        await halfway.wait()
        task.cancel()  # as a kill would: whatever page was in flight rolls back
        await asyncio.gather(task, return_exceptions=True)

        position = await read_position(container.engine, projector.name)
        assert committed[-1] <= position < max_id, f"{projector.name} claims {position}"
        await ProjectorRunner(projector, engine=container.engine, store=container.store).catch_up()

        assert await read_position(container.engine, projector.name) == max_id
        assert await snapshot(container, projector.tables) == incremental, f"{projector.name} differs"
    monkeypatch.undo()


async def parley_rebuild_shows_progress_and_gives_the_same_read_model(container: Container, settings: Settings) -> None:
    identity = next(p for p in all_projectors(container) if p.name == "identity")
    incremental = await snapshot(container, identity.tables)
    total = len(await container.store.call(container.store.read, 1, 100_000))
    max_id = await container.store.call(container.store.max_id)

    done = run_cli(settings, "rebuild", "identity")

    assert done.returncode == 0, done.stderr
    assert f"rebuilt identity: {total} events in" in done.stdout
    assert "rebuild identity" in done.stderr and f"{max_id}/{max_id}" in done.stderr  # the progress bar
    assert await snapshot(container, identity.tables) == incremental
    assert await read_position(container.engine, "identity") == max_id

    unknown = run_cli(settings, "rebuild", "no-such-model")
    assert unknown.returncode != 0
    assert "unknown projector" in unknown.stderr and "identity" in unknown.stderr
