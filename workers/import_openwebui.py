"""``parley import open-webui``: the composition of the Open WebUI import (``application.openwebui_import``)
with its reader (``adapters.openwebui_db``), a progress bar per step on stderr, and the final report."""

from __future__ import annotations

import sys
from typing import IO, Any

from adapters.openwebui_db import read_openwebui
from application.openwebui_import import MovingInReport, OpenWebUIImport

__all__ = ["TqdmProgress", "import_open_webui", "render_report"]


class TqdmProgress:
    """One bar per step, on stderr."""

    def __init__(self, file: IO[str] = sys.stderr) -> None:
        self.file = file
        self.bar: Any = None

    def start(self, step: str, total: int) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=total, desc=step, unit="", file=self.file, leave=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


async def import_open_webui(
    c: Any, *, db: str, uploads: str, tenant: str, dry_run: bool = False, progress: TqdmProgress | None = None
) -> MovingInReport:
    """Import the deployment at ``db``/``uploads`` into ``tenant`` through the container's services."""
    import asyncio

    data = await asyncio.to_thread(read_openwebui, db, uploads)
    importer = OpenWebUIImport(
        store=c.store,
        identity=c.identity,
        exchange=c.exchange,
        models=c.models,
        knowledge=c.knowledge,
        user_settings=c.user_settings,
        progress=progress,
    )
    try:
        return await importer.run(data, tenant=tenant, dry_run=dry_run)
    finally:
        if progress is not None:
            progress.close()


def render_report(report: MovingInReport) -> str:
    verb = "would import" if report.dry_run else "imported"
    kinds = sorted({*report.imported, *report.already})
    lines = [f"Open WebUI import{' (dry run: nothing written)' if report.dry_run else ''}:"]
    for kind in kinds:
        lines.append(f"  {kind}: {verb} {report.imported.get(kind, 0)}, there already {report.already.get(kind, 0)}")
    if report.skipped:
        lines.append(f"skipped or changed ({len(report.skipped)}):")
        lines.extend(f"  {kind} {ref}: {why}" for kind, ref, why in report.skipped)
    if report.notes:
        lines.append("not carried over / changed:")
        lines.extend(f"  {note}" for note in report.notes)
    return "\n".join(lines)
