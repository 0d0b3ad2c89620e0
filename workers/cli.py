"""The ``parley`` command.

``serve`` runs everything on the embedded engines in one process tree; ``api``, ``relay``, ``project``
run the parts separately against given URLs (production); ``rebuild``, ``replay``, ``audit`` and ``admin``
are operator tools.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog

from adapters.embedded import EngineStartError, running_engines
from adapters.logging import configure_logging
from adapters.nats import StreamsError, servers
from adapters.settings import Settings, SettingsError

log = structlog.get_logger("parley.cli")

CLUSTER_REPLICAS = 3
"""Replicas of each stream on the NATS cluster of ``parley serve --nats-cluster``: any one node may be lost."""


def _settings(args: argparse.Namespace, part: str | None = None) -> Settings:
    """The settings from the environment, logging set up, and for a long-running ``part`` (api, relay,
    project, worker, ingest, webhooks) OpenTelemetry as the ``OTEL_*`` variables say."""
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    settings = Settings.from_env(**overrides)
    configure_logging(settings.log_level, settings.log_json)
    if part is not None:
        from adapters.tracing import SERVICE_NAMES, configure_tracing, projector_apply
        from projections.runtime import observe_applies

        if configure_tracing(SERVICE_NAMES[part]):
            observe_applies(projector_apply)  # the read models' applies, where this process runs projectors
    return settings


class NothingRunning(Exception):
    """No ``PARLEY_*_URL`` is set and no ``parley serve`` runs under ``PARLEY_HOME``."""


def _with_engines(settings: Settings, *needed: str) -> Settings:
    """``settings`` with the URLs of the engines this command needs: the ``PARLEY_*_URL`` variables when
    any is set, else those of the engines that ``parley serve`` runs under ``PARLEY_HOME``."""
    given = [n for n in ("database_url", "nats_url", "redis_url") if getattr(settings, n)]
    if given:  # the environment names the deployment: never mix in the embedded engines
        missing = [n for n in needed if n not in given]
        if missing:
            raise SettingsError(
                [
                    f"PARLEY_{n.upper()}{' (or PARLEY_REDIS_SENTINELS)' if n == 'redis_url' else ''} is required "
                    f"for this command beside PARLEY_{given[0].upper()}"
                    for n in missing
                ]
            )
        return settings
    urls = running_engines(settings.home)
    if urls is None:
        raise NothingRunning(
            f"nothing is running under {settings.home}: start it with 'make run' (parley serve), or set "
            "PARLEY_DATABASE_URL, PARLEY_NATS_URL and PARLEY_REDIS_URL to use other engines"
        )
    settings = settings.with_urls(database_url=urls.database_url, nats_url=urls.nats_url, redis_url=urls.redis_url)
    if len(servers(urls.nats_url)) > 1 and "PARLEY_NATS_REPLICAS" not in os.environ:
        # `parley serve --nats-cluster` runs: keep its streams' replicas (a default of 1 would scale them down).
        settings = msgspec.structs.replace(settings, nats_replicas=CLUSTER_REPLICAS)
    return settings


def _run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


# --- the parts ----------------------------------------------------------------------------------------------
def cmd_api(args: argparse.Namespace) -> None:
    import uvicorn

    from adapters.tracing import shutdown_tracing
    from api.app import create_app
    from api.server import server_config, tune_collector
    from workers.bootstrap import bootstrap

    settings = _settings(args, "api")
    settings = _with_engines(settings, "database_url", "nats_url", "redis_url")

    async def main() -> None:
        c = await bootstrap(settings)
        tenant = await c.identity.ensure_tenant(settings.default_tenant, settings.default_tenant.title())
        await c.models.ensure_local(str(tenant.id))
        app = create_app(c, on_shutdown=[c.close, shutdown_tracing])
        config = server_config(app, settings, lifespan="on")
        log.info(
            "api_listening",
            host=settings.host,
            port=settings.port,
            trusted_proxies=list(settings.trusted_proxies),
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            keep_alive_timeout_s=settings.keep_alive_timeout_s,
        )
        tune_collector()
        await uvicorn.Server(config).serve()

    asyncio.run(main())


def cmd_relay(args: argparse.Namespace) -> None:
    from workers.bootstrap import bootstrap
    from workers.relay import Relay

    settings = _settings(args, "relay")
    settings = _with_engines(settings, "database_url", "nats_url", "redis_url")

    async def main(stop: asyncio.Event) -> None:
        c = await bootstrap(settings, pool_size=2)
        js = await c.connect_nats("parley-relay")
        try:
            await Relay(store=c.store, engine=c.engine, js=js, subjects=c.subjects).run(stop)
        finally:
            await c.close()

    _run_until_signal(main)


def cmd_ingest(args: argparse.Namespace) -> None:
    from workers.bootstrap import bootstrap
    from workers.ingest import IndexBuilder, IngestionWorker, ReEmbedder

    settings = _settings(args, "ingest")
    settings = _with_engines(settings, "database_url", "nats_url", "redis_url")

    async def main(stop: asyncio.Event) -> None:
        c = await bootstrap(settings, pool_size=4)
        js = await c.connect_nats("parley-ingest")
        try:
            await asyncio.gather(
                IngestionWorker(c, js=js, concurrency=args.concurrency or settings.ingest_concurrency).run(stop),
                ReEmbedder(c).run(stop),
                IndexBuilder(c).run(stop),
            )
        finally:
            await c.close()

    _run_until_signal(main)


def cmd_project(args: argparse.Namespace) -> None:
    from projections.group import ProjectorGroup, split_for_groups
    from projections.runtime import ProjectorRunner
    from workers.bootstrap import bootstrap

    settings = _settings(args, "project")
    settings = _with_engines(settings, "database_url", "nats_url", "redis_url")
    chosen = _check_projector_names(args.names)

    async def main(stop: asyncio.Event) -> None:
        c = await bootstrap(settings, pool_size=len(chosen) + 1)
        js = await c.connect_nats("parley-projector")
        try:
            shared, alone = split_for_groups(_projectors(c, chosen))
            runners: list[ProjectorGroup | ProjectorRunner] = [
                ProjectorRunner(p, engine=c.engine, store=c.store) for p in alone
            ]
            if shared:  # one consumer and one transaction per batch for all of them
                runners.append(ProjectorGroup(shared, engine=c.engine, store=c.store))
            # Where the audit chain grows, its heads are signed and kept outside the database, and the
            # retention policies are applied (the sweep drops audit rows behind a checkpoint).
            beside = [_checkpointer(settings, c.engine).run(stop), _retention_sweeper(settings, c).run(stop)]
            await asyncio.gather(*(r.run(js, c.subjects, stop) for r in runners), *(beside if "audit" in chosen else []))
        finally:
            await c.close()

    _run_until_signal(main)


def cmd_webhooks(args: argparse.Namespace) -> None:
    from workers.bootstrap import bootstrap
    from workers.webhooks import DispatchConfig, Dispatcher

    settings = _settings(args, "webhooks")
    settings = _with_engines(settings, "database_url", "nats_url", "redis_url")

    async def main(stop: asyncio.Event) -> None:
        c = await bootstrap(settings, pool_size=4)
        js = await c.connect_nats("parley-webhooks")
        try:
            config = DispatchConfig.from_settings(settings)
            await Dispatcher(engine=c.engine, store=c.store, webhooks=c.webhooks, config=config).run(js, c.subjects, stop)
        finally:
            await c.close()

    _run_until_signal(main)


def cmd_worker(args: argparse.Namespace) -> None:
    from adapters.metrics import WorkerMetrics
    from workers.bootstrap import bootstrap
    from workers.generate import GenerationWorker

    settings = _settings(args, "worker")
    settings = _with_engines(settings, "database_url", "nats_url", "redis_url")

    async def main(stop: asyncio.Event) -> None:
        c = await bootstrap(settings, pool_size=4)
        js = await c.connect_nats("parley-worker")
        try:
            metrics = WorkerMetrics()
            if settings.worker_metrics_port:
                metrics.serve(settings.worker_metrics_port)
            worker = GenerationWorker(
                c, js=js, nc=c.nc, concurrency=args.concurrency, preload_local=settings.preload_local_model,
                metrics=metrics,
            )  # fmt: skip
            try:
                await worker.run(stop)
            finally:
                metrics.close()
        finally:
            await c.close()

    _run_until_signal(main)


def _check_projector_names(names: list[str], *, also: tuple[str, ...] = ()) -> list[str]:
    from workers.bootstrap import PROJECTOR_NAMES

    known = (*PROJECTOR_NAMES, *also)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown projector(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return names or list(PROJECTOR_NAMES)


def _projectors(c: Any, names: list[str]) -> list[Any]:
    from projections.webhooks import WebhooksProjector
    from workers.bootstrap import all_projectors

    # The webhooks projector runs in `parley webhooks` (it hands what it writes to the dispatcher beside it);
    # a rebuild of it re-derives the endpoints and adds only the messages that are missing.
    return [p for p in [*all_projectors(c), WebhooksProjector()] if p.name in names]


def cmd_rebuild(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from projections.runtime import rebuild
    from workers.bootstrap import bootstrap

    settings = _settings(args)
    settings = _with_engines(settings, "database_url", "redis_url")
    chosen = _check_projector_names([args.name], also=("webhooks",))

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        try:
            for projector in _projectors(c, chosen):
                total = await c.store.call(c.store.max_id)
                with tqdm(total=total, desc=f"rebuild {projector.name}", unit="ev", file=sys.stderr) as bar:

                    def progress(position: int, target: int, bar: Any = bar) -> None:
                        bar.total = target
                        bar.update(position - bar.n)

                    started = time.perf_counter()
                    count = await rebuild(projector, engine=c.engine, store=c.store, progress=progress)
                elapsed = time.perf_counter() - started
                print(
                    f"rebuilt {projector.name}: {count} events in {elapsed:.1f}s "
                    f"({count / elapsed if elapsed else 0:.0f} events/s)"
                )
        finally:
            await c.close()

    asyncio.run(main())


def cmd_replay(args: argparse.Namespace) -> None:
    """``parley replay --tenant SLUG --at T --into SCHEMA``: every read model of one tenant as of ``T``,
    rebuilt into a new schema (``projections.replay``)."""
    from datetime import UTC, datetime

    from tqdm import tqdm

    from domain.errors import ParleyError
    from projections.replay import replay_tenant
    from workers.bootstrap import all_projectors, bootstrap

    try:
        at = datetime.fromisoformat(args.at)
    except ValueError:
        raise SystemExit(f"--at {args.at!r} is not an ISO 8601 instant (e.g. 2026-03-01T12:00:00Z)") from None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
    settings = _with_engines(_settings(args), "database_url", "redis_url")

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        try:
            tenant = await c.identity.tenant(args.tenant)
            projectors = [p for p in all_projectors(c) if p.tables]  # not the shredder: it destroys keys
            with tqdm(desc=f"replay {tenant.slug} at {at.isoformat()}", unit="ev", file=sys.stderr) as bar:

                def progress(position: int, target: int) -> None:
                    bar.total = target
                    bar.update(position - bar.n)

                started = time.perf_counter()
                done = await replay_tenant(
                    projectors, engine=c.engine, store=c.store, tenant_id=str(tenant.id), at=at,
                    schema=args.into, replace=args.replace, progress=progress,
                )  # fmt: skip
            print(
                f"replayed {tenant.slug} as of {at.isoformat()} into schema {done.schema}: {done.events} events "
                f"of the tenant through notification {done.through} in {time.perf_counter() - started:.1f}s "
                f"({', '.join(p.name for p in projectors)})"
            )
        except ParleyError as e:
            raise SystemExit(f"{e.code}: {e.message}") from None
        finally:
            await c.close()

    asyncio.run(main())


def cmd_migrate(args: argparse.Namespace) -> None:
    """``parley migrate encrypt-personal-data``: seal what was written in the clear, then clear its copies
    (``PARLEY_EVENTS`` purged, the audit log rebuilt over the sealed events)."""
    from functools import partial

    from tqdm import tqdm

    from adapters.migrations import encrypt_personal_data
    from projections.audit import AuditProjector
    from projections.runtime import rebuild
    from workers.bootstrap import bootstrap

    settings = _with_engines(_settings(args), "database_url", "redis_url", "nats_url")

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        try:
            with tqdm(desc="seal personal data", unit="ev", file=sys.stderr) as bar:

                def progress(position: int, target: int, rewritten: int) -> None:
                    bar.total = target
                    bar.update(position - bar.n)
                    bar.set_postfix(rewritten=rewritten)

                read, rewritten = await c.store.call(partial(encrypt_personal_data, c.store, progress=progress))
            print(f"sealed: {rewritten} of {read} events read rewritten")
            js = await c.connect_nats("parley-migrate")
            await js.purge_stream(c.subjects.events_stream)
            await js.purge_stream(c.subjects.tokens_stream)
            print("purged PARLEY_EVENTS and PARLEY_TOKENS (projectors catch up from the event store)")
            with tqdm(desc="rebuild audit", unit="ev", file=sys.stderr) as bar:

                def rebuilt(position: int, target: int) -> None:
                    bar.total = target
                    bar.update(position - bar.n)

                await rebuild(AuditProjector(), engine=c.engine, store=c.store, progress=rebuilt)
            print("rebuilt the audit log over the sealed events (take a new audit checkpoint: parley audit checkpoint)")
        finally:
            await c.close()

    asyncio.run(main())


def _checkpointer(settings: Settings, engine: Any) -> Any:
    from functools import partial

    from adapters.checkpoints import Checkpointer, checkpoint_key, open_checkpoint_sink
    from projections.audit import chain_heads

    return Checkpointer(
        checkpoint_key(settings.secret_key),
        open_checkpoint_sink(settings.audit_checkpoint_sink),
        partial(chain_heads, engine),
        interval_s=settings.audit_checkpoint_interval_s,
    )


def cmd_audit_verify(args: argparse.Namespace) -> None:
    from pathlib import Path

    from adapters.checkpoints import (
        Checkpoint,
        Rejected,
        checkpoint_key,
        load_public_key,
        open_checkpoint_sink,
        read_checkpoints,
    )
    from adapters.database import create_engine, create_tables
    from projections.audit import verify_chain

    settings = _settings(args)
    settings = _with_engines(settings, "database_url")
    assert settings.database_url is not None
    # --checkpoints with no value: the configured sink
    sink_location = None if args.checkpoints is None else (args.checkpoints or settings.audit_checkpoint_sink)
    if args.public_key and sink_location is None:
        raise SystemExit("parley: --public-key checks checkpoints: give --checkpoints too")
    try:
        public_key = (
            load_public_key(Path(args.public_key).read_bytes())
            if args.public_key
            else checkpoint_key(settings.secret_key).public_key
        )
    except (OSError, ValueError) as exc:
        raise SystemExit(f"parley: --public-key {args.public_key}: {exc}") from None

    async def main() -> int:
        anchors: list[Checkpoint] = []
        rejected: list[Rejected] = []
        if sink_location is not None:
            anchors, rejected = await read_checkpoints(open_checkpoint_sink(sink_location), public_key, args.tenant)
        engine = create_engine(settings.database_url, pool_size=2)
        try:
            await create_tables(engine)
            problems = await verify_chain(engine, args.tenant, anchors=anchors)
        finally:
            await engine.dispose()
        for p in [*rejected, *problems]:
            print(f"BROKEN tenant={p.tenant_id} seq={p.seq}: {p.problem}")
        if rejected or problems:
            print(f"audit chain verification FAILED: {len(rejected) + len(problems)} problem(s)")
            return 1
        if sink_location is None:
            print("audit chain verified: intact")
        else:
            key = "the given public key"
            if not args.public_key:
                key = "this deployment's key (pass --public-key to check against a copy kept elsewhere)"
            print(f"audit chain verified: intact, and it matches {len(anchors)} checkpoint(s) signed by {key}")
        return 0

    sys.exit(asyncio.run(main()))


def cmd_audit_checkpoint(args: argparse.Namespace) -> None:
    from adapters.database import create_engine, create_tables

    settings = _settings(args)
    settings = _with_engines(settings, "database_url")
    assert settings.database_url is not None

    async def main() -> None:
        engine = create_engine(settings.database_url, pool_size=2)
        try:
            await create_tables(engine)
            written = await _checkpointer(settings, engine).checkpoint_once()
        finally:
            await engine.dispose()
        for checkpoint in written:
            print(f"checkpoint tenant={checkpoint.tenant_id} seq={checkpoint.seq} hash={checkpoint.hash}")
        print(f"{len(written)} checkpoint(s) written to {settings.audit_checkpoint_sink} (anchored heads skipped)")

    asyncio.run(main())


def cmd_audit_public_key(args: argparse.Namespace) -> None:
    from adapters.checkpoints import checkpoint_key

    key = checkpoint_key(_settings(args).secret_key)
    print(f"audit checkpoint key {key.key_id} (Ed25519)")
    print(key.public_pem(), end="")
    print(f"raw (base64): {key.public_base64()}")


def _retention_sweeper(settings: Settings, c: Any) -> Any:
    from workers.retention import RetentionSweeper, retention_service

    return RetentionSweeper(retention_service(c, sweeping=True), interval_s=settings.retention_sweep_interval_s)


def cmd_retention_sweep(args: argparse.Namespace) -> None:
    from domain.errors import ParleyError
    from workers.bootstrap import bootstrap
    from workers.retention import retention_service

    settings = _with_engines(_settings(args), "database_url", "redis_url")

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        try:
            if settings.nats_url:  # the token chunks of the chats it deletes are erased too
                await c.connect_nats("parley-retention")
            retention = retention_service(c, sweeping=True)
            if args.tenant:
                try:
                    tenant = await c.identity.tenant(args.tenant)
                except ParleyError as exc:
                    raise SystemExit(f"parley: tenant {args.tenant}: {exc.message}") from None
                report = await retention.sweep(str(tenant.id))
                if report is None:
                    print(f"tenant {args.tenant} has no retention policy: nothing to do")
                reports = [report] if report else []
            else:
                reports = await retention.sweep_all()
            for r in reports:
                dropped = f"{r.audit_drop.count} audit row(s) up to seq {r.audit_drop.up_to_seq}" if r.audit_drop else "no audit row"
                held = " (under a legal hold)" if r.held else ""
                print(f"tenant {r.tenant_id}{held}: {len(r.chats_deleted)} chat(s) deleted, {dropped} dropped")
            chats = sum(len(r.chats_deleted) for r in reports)
            rows = sum(r.audit_drop.count for r in reports if r.audit_drop)
            print(f"retention sweep: {chats} chat(s) deleted, {rows} audit row(s) dropped, {len(reports)} tenant(s) with a policy")
        finally:
            await c.close()

    asyncio.run(main())


def cmd_admin_create_tenant(args: argparse.Namespace) -> None:
    from application.context import CommandContext
    from workers.bootstrap import bootstrap

    settings = _settings(args)
    settings = _with_engines(settings, "database_url", "redis_url")

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        try:
            t = await c.identity.create_tenant(
                CommandContext(tenant_id="", actor="system:cli"),
                None,
                slug=args.slug,
                name=args.name,
                allow_signup=not args.no_signup,
                default_role=args.default_role,
                domains=args.domain or [],
            )
            await c.models.ensure_local(str(t.id))
            print(f"created tenant {t.slug} ({t.id})")
            if args.admin_email:
                invitation = await c.identity.invite(
                    CommandContext(tenant_id=str(t.id), actor="system:cli"),
                    None,
                    tenant=t.slug,
                    email=args.admin_email,
                    role="admin",
                )
                print(
                    f"invited {invitation.email} as its admin until {invitation.expires_at:%Y-%m-%d %H:%M} UTC; "
                    f"they accept with POST /api/v1/auths/invitations/accept and this token (shown once):\n"
                    f"{invitation.token}"
                )
        finally:
            await c.close()

    asyncio.run(main())


def cmd_admin_create_user(args: argparse.Namespace) -> None:
    from application.context import CommandContext
    from application.identity import Principal
    from workers.bootstrap import bootstrap

    settings = _settings(args)
    settings = _with_engines(settings, "database_url", "redis_url")
    password = os.environ.get("PARLEY_NEW_USER_PASSWORD") or getpass.getpass("password for the new user: ")

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        try:
            tenant = await c.identity.tenant(args.tenant or settings.default_tenant)
            operator = Principal(tenant_id=str(tenant.id), user_id=uuid.UUID(int=0), role="admin", via="cli")
            user = await c.identity.create_user(
                CommandContext(tenant_id=str(tenant.id), actor="system:cli"),
                operator,
                email=args.email,
                password=password,
                name=args.name,
                role=args.role,
            )
            print(f"created user {user.email} ({user.id}) with role {user.role} in tenant {tenant.slug}")
        finally:
            await c.close()

    asyncio.run(main())


def cmd_usage_report(args: argparse.Namespace) -> None:
    from datetime import date

    from projections.usage import check_report, report_csv, usage_report
    from workers.bootstrap import bootstrap

    settings = _settings(args)
    settings = _with_engines(settings, "database_url", "redis_url")
    try:
        start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
    except ValueError as exc:
        raise SystemExit(f"parley: dates are YYYY-MM-DD: {exc}") from None
    check_report(start, end, args.group_by)

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        try:
            tenant = await c.identity.tenant(args.tenant)
            report = await usage_report(
                c.engine, str(tenant.id), start=start, end=end, group_by=args.group_by, limit=None
            )
        finally:
            await c.close()
        if args.csv:
            sys.stdout.write(report_csv(report, args.group_by))
            return
        metrics = ("prompt_tokens", "completion_tokens", "total_tokens", "requests")
        key = "user_id" if args.group_by == "user" else args.group_by
        table = [[args.group_by, "prompt", "completion", "total", "requests"]]
        for item in report.items:
            label = item.get("email") or item[key]
            table.append([str(label), *(f"{item[m]:,}" for m in metrics)])
        table.append(["TOTAL", *(f"{report.totals[m]:,}" for m in metrics)])
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        print(f"usage of {tenant.slug} from {start} to {end}, by {args.group_by} ({report.total} groups)")
        for row in table:
            cells = [row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))]
            print("  ".join(cells))

    asyncio.run(main())


def cmd_export_user(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tqdm import tqdm

    from api.controllers.privacy import privacy_service
    from application.context import CommandContext
    from application.identity import Principal
    from workers.bootstrap import bootstrap

    settings = _settings(args)
    settings = _with_engines(settings, "database_url", "redis_url")
    out = Path(args.out)

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        partial = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            tenant = await c.identity.tenant(args.tenant)
            privacy = privacy_service(c)
            user_id = await privacy.find_user(str(tenant.id), args.user)
            operator = Principal(tenant_id=str(tenant.id), user_id=uuid.UUID(int=0), role="admin", via="cli")
            ctx = CommandContext(tenant_id=str(tenant.id), actor="system:cli")
            export = await privacy.export(ctx, operator, user_id)
            file = await asyncio.to_thread(partial.open, "wb")
            try:
                with tqdm(desc=f"export {user_id}", unit="B", unit_scale=True, file=sys.stderr) as bar:
                    async for chunk in export.chunks:
                        await asyncio.to_thread(file.write, chunk)
                        bar.update(len(chunk))
            finally:
                await asyncio.to_thread(file.close)
            await asyncio.to_thread(partial.replace, out)  # a half-written archive never takes the name
            print(f"exported {user_id} of tenant {tenant.slug} to {out} ({bar.n:,} bytes)")
        finally:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            await c.close()

    asyncio.run(main())


def cmd_import_open_webui(args: argparse.Namespace) -> None:
    from adapters.openwebui_db import OpenWebUISourceError
    from workers.bootstrap import bootstrap
    from workers.import_openwebui import TqdmProgress, import_open_webui, render_report

    settings = _settings(args)
    settings = _with_engines(settings, "database_url", "redis_url")

    async def main() -> None:
        c = await bootstrap(settings, pool_size=2)
        try:
            report = await import_open_webui(
                c, db=args.db, uploads=args.uploads, tenant=args.tenant, dry_run=args.dry_run, progress=TqdmProgress()
            )
        finally:
            await c.close()
        print(render_report(report))

    try:
        asyncio.run(main())
    except OpenWebUISourceError as e:
        print(f"parley: {e}", file=sys.stderr)
        sys.exit(2)


# --- serve: everything, one process tree ----------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> None:
    from adapters.embedded import EmbeddedEngines

    started = time.monotonic()
    settings = _settings(args)
    nodes = args.nats_cluster
    if nodes != 1 and not 3 <= nodes <= 7:
        raise SettingsError([f"--nats-cluster {nodes}: a NATS cluster has 3 to 7 nodes (1: a single server)"])
    if nodes > 1:
        if settings.nats_url:
            raise SettingsError(["--nats-cluster starts an embedded NATS cluster: unset PARLEY_NATS_URL"])
        settings = msgspec.structs.replace(settings, nats_replicas=CLUSTER_REPLICAS)
    elif not settings.nats_url and settings.nats_replicas > 1:
        raise SettingsError(
            [f"PARLEY_NATS_REPLICAS={settings.nats_replicas} needs a NATS cluster: add --nats-cluster 3"]
        )
    engines = EmbeddedEngines(settings.home, fast=settings.embedded_fast, nats_cluster=nodes)
    urls = engines.start(database_url=settings.database_url, nats_url=settings.nats_url, redis_url=settings.redis_url)
    settings = settings.with_urls(database_url=urls.database_url, nats_url=urls.nats_url, redis_url=urls.redis_url)
    env = {**os.environ, **settings.child_env()}
    parts = {
        "api": ["api"],
        "relay": ["relay"],
        "project": ["project"],
        "worker": ["worker"],
        "ingest": ["ingest"],
        "webhooks": ["webhooks"],
    }
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(name: str) -> None:
        children[name] = subprocess.Popen([sys.executable, "-m", "workers.cli", *parts[name]], env=env)

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    base_url = f"http://{settings.host}:{settings.port}"
    try:
        for name in parts:
            spawn(name)
        print(f"parley starting on {base_url} (Ctrl-C stops)", flush=True)
        restarts: dict[str, list[float]] = {n: [] for n in parts}
        announced, next_probe = False, 0.0
        while not stopping:
            time.sleep(0.2)
            if not announced and time.monotonic() >= next_probe:  # each probe is a request log line: 1/s
                next_probe = time.monotonic() + 1
                if line := _ready_line(settings, base_url, started):
                    print(line, flush=True)
                    announced = True
            for name, proc in list(children.items()):
                if proc.poll() is not None and not stopping:
                    recent = [t for t in restarts[name] if time.monotonic() - t < 60]
                    if len(recent) >= 5:
                        log.error("child_crash_loop", part=name)
                        stopping = True
                        break
                    log.warning("child_exited_restarting", part=name, status=proc.returncode)
                    restarts[name] = [*recent, time.monotonic()]
                    spawn(name)
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in children.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        engines.stop()


def _ready_line(settings: Settings, base_url: str, started: float) -> str | None:
    """What ``parley serve`` says once ``/health/ready`` says the API, the engines and a worker with its
    models loaded are all up (or a model failed to load, which waiting will not mend); None until then."""
    import httpx

    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    try:
        body = httpx.get(f"http://{host}:{settings.port}/health/ready", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return None
    engines = body.get("checks", {}).get("engines")
    if body.get("status") == "not_ready" or engines not in ("ok", "failed"):
        return None
    seconds = time.monotonic() - started
    loads = [e for w in body.get("workers", []) for e in w.get("engines", [])]
    notes = [f"{e['kind']} model loaded in {e['load_seconds']:.1f} s" for e in loads if e["state"] == "ready"]
    notes += [f"the {e['kind']} model failed to load: {e['error']}" for e in loads if e["state"] == "failed"]
    log.info("parley_ready", url=base_url, seconds=round(seconds, 1), engines=engines)
    detail = f" ({'; '.join(dict.fromkeys(notes))})" if notes else ""
    return f"parley ready at {base_url} in {seconds:.1f} s{detail}"


def cmd_schema_export(args: argparse.Namespace) -> None:
    """The event contract's JSON Schema (what integrations may rely on), on stdout or into a file."""
    import json

    from schema.contract import contract_schema

    text = json.dumps(contract_schema(), indent=2, sort_keys=True) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"wrote the event schema to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run everything on the embedded engines")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--nats-cluster", type=int, default=1, metavar="N",
        help="run NATS as an embedded JetStream cluster of N nodes (3 to 7), streams with 3 replicas (default: 1 server)",
    )  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)

    sub.add_parser("relay", help="run the event relay (one active, others standby)").set_defaults(func=cmd_relay)

    worker = sub.add_parser("worker", help="run a generation worker (one per GPU)")
    worker.add_argument("--concurrency", type=int, help="generations at once (default PARLEY_WORKER_CONCURRENCY)")
    worker.set_defaults(func=cmd_worker)

    ingest = sub.add_parser("ingest", help="run an ingestion worker (extract and chunk uploads) and the re-embedder")
    ingest.add_argument("--concurrency", type=int, help="documents at once (default PARLEY_INGEST_CONCURRENCY)")
    ingest.set_defaults(func=cmd_ingest)

    sub.add_parser(
        "webhooks", help="run the webhook dispatcher (as many as you like: they share the work)"
    ).set_defaults(func=cmd_webhooks)

    project = sub.add_parser("project", help="run projectors (all by default)")
    project.add_argument("names", nargs="*")
    project.set_defaults(func=cmd_project)

    rebuild = sub.add_parser("rebuild", help="rebuild a read model from the event store (e.g. vectors)")
    rebuild.add_argument("name")
    rebuild.set_defaults(func=cmd_rebuild)

    replay = sub.add_parser("replay", help="one tenant's read models as of an instant, into a new schema")
    replay.add_argument("--tenant", required=True, help="the tenant's slug")
    replay.add_argument("--at", required=True, help="the instant, ISO 8601 (UTC when no offset is given)")
    replay.add_argument("--into", required=True, metavar="SCHEMA", help="the Postgres schema to create")
    replay.add_argument("--replace", action="store_true", help="drop and recreate the schema if it exists")
    replay.set_defaults(func=cmd_replay)

    audit = sub.add_parser("audit", help="audit log tools").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the audit hash chain")
    verify.add_argument("--tenant", help="tenant id (default: all)")
    verify.add_argument(
        "--checkpoints",
        nargs="?",
        const="",
        metavar="DIR_OR_URL",
        help="also check the signed checkpoints in this directory, file:///dir or s3://bucket/prefix "
        "(no value: PARLEY_AUDIT_CHECKPOINTS)",
    )
    verify.add_argument("--public-key", metavar="FILE", help="PEM or raw base64 (default: derived from the secret)")
    verify.set_defaults(func=cmd_audit_verify)
    checkpoint = audit.add_parser("checkpoint", help="sign and store a checkpoint of every head that moved, now")
    checkpoint.set_defaults(func=cmd_audit_checkpoint)
    public_key = audit.add_parser("public-key", help="print the public key that checks audit checkpoints")
    public_key.set_defaults(func=cmd_audit_public_key)

    retention = sub.add_parser("retention", help="retention policies").add_subparsers(
        dest="retention_command", required=True
    )
    sweep = retention.add_parser("sweep", help="apply every tenant's retention policy now (chats, audit rows)")
    sweep.add_argument("--tenant", help="only this tenant (its slug)")
    sweep.set_defaults(func=cmd_retention_sweep)

    migrate = sub.add_parser("migrate", help="one-off migrations").add_subparsers(dest="migrate_command", required=True)
    migrate.add_parser(
        "encrypt-personal-data", help="seal personal fields written in the clear (resumable, shows progress)"
    ).set_defaults(func=cmd_migrate)

    admin = sub.add_parser("admin", help="bootstrapping").add_subparsers(dest="admin_command", required=True)
    ct = admin.add_parser("create-tenant")
    ct.add_argument("--slug", required=True)
    ct.add_argument("--name", required=True)
    ct.add_argument("--no-signup", action="store_true")
    ct.add_argument("--default-role", default="user")
    ct.add_argument("--domain", action="append")
    ct.add_argument("--admin-email", help="invite the tenant's first admin (prints the invitation token once)")
    ct.set_defaults(func=cmd_admin_create_tenant)
    cu = admin.add_parser("create-user", help="password from PARLEY_NEW_USER_PASSWORD or a prompt")
    cu.add_argument("--tenant")
    cu.add_argument("--email", required=True)
    cu.add_argument("--name", required=True)
    cu.add_argument("--role", default="user")
    cu.set_defaults(func=cmd_admin_create_user)

    usage = sub.add_parser("usage", help="token usage").add_subparsers(dest="usage_command", required=True)
    ur = usage.add_parser("report", help="usage of a tenant over a date range (tenant-local days)")
    ur.add_argument("--tenant", required=True, help="tenant slug")
    ur.add_argument("--from", dest="start", required=True, help="first day, YYYY-MM-DD")
    ur.add_argument("--to", dest="end", required=True, help="last day, YYYY-MM-DD")
    ur.add_argument("--group-by", choices=("user", "model", "role", "day"), default="user")
    ur.add_argument("--csv", action="store_true", help="CSV on stdout")
    ur.set_defaults(func=cmd_usage_report)

    exports = sub.add_parser("export", help="personal data exports").add_subparsers(
        dest="export_command", required=True
    )
    eu = exports.add_parser("user", help="everything parley holds about one user, as a zip (GDPR art. 15/20)")
    eu.add_argument("--tenant", required=True, help="tenant slug")
    eu.add_argument("--user", required=True, help="the user's id or e-mail address")
    eu.add_argument("--out", required=True, help="the zip file to write")
    eu.set_defaults(func=cmd_export_user)
    imports = sub.add_parser("import", help="move in from another system").add_subparsers(
        dest="import_command", required=True
    )
    owui = imports.add_parser("open-webui", help="an Open WebUI deployment: its database and uploads")
    owui.add_argument("--db", required=True, help="webui.db (SQLite) or a postgresql:// URL")
    owui.add_argument("--uploads", required=True, help="Open WebUI's uploads directory")
    owui.add_argument("--tenant", required=True, help="the tenant slug to import into")
    owui.add_argument("--dry-run", action="store_true", help="print what would be imported; write nothing")
    owui.set_defaults(func=cmd_import_open_webui)
    schema = sub.add_parser("schema", help="the event contract").add_subparsers(dest="schema_command", required=True)
    export = schema.add_parser("export", help="print the events' JSON Schema (2020-12)")
    export.add_argument("--out", help="write it to this file instead")
    export.set_defaults(func=cmd_schema_export)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (SettingsError, NothingRunning, EngineStartError, StreamsError) as exc:
        print(f"parley: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        from domain.errors import ParleyError

        if isinstance(exc, ParleyError):
            print(f"parley: {exc.code}: {exc.message}", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
