"""Test helper: Open WebUI's own export of the chats in the shared Open WebUI 0.12.4 fixture (its
``webui.db``, see ../shared/fixtures/open-webui-0.12.4/README.md), built from the ``chat`` rows as its
``GET /api/v1/chats/all`` writes them (``ChatResponse``: the row, with ``chat`` and ``meta`` decoded).
Where the fixture is not on this machine, the copy checked in beside this file (made the same way, and
compared with the fixture wherever it is present) stands in."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

FIXTURE_DB = Path(
    os.environ.get(
        "PARLEY_OPENWEBUI_FIXTURE",
        Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "open-webui-0.12.4" / "webui.db",
    )
)
CHECKED_IN = Path(__file__).with_name("fixtures") / "open_webui_0_12_4_chats.json"


def export_from_db(path: Path = FIXTURE_DB) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM chat ORDER BY created_at, id")]
    return [
        {
            "id": r["id"],
            "user_id": r["user_id"],
            "title": r["title"],
            "chat": json.loads(r["chat"]),
            "updated_at": r["updated_at"],
            "created_at": r["created_at"],
            "share_id": r["share_id"],
            "archived": bool(r["archived"]),
            "pinned": bool(r["pinned"]),
            "meta": json.loads(r["meta"] or "{}"),
            "folder_id": r["folder_id"],
            "current_message_id": r["current_message_id"],
        }
        for r in rows
    ]


def fixture_export() -> list[dict[str, Any]]:
    if FIXTURE_DB.exists():
        return export_from_db()
    return list(json.loads(CHECKED_IN.read_text()))


if __name__ == "__main__":  # refresh the checked-in copy: .venv/bin/python -m tests.openwebui_chats
    CHECKED_IN.write_text(json.dumps(export_from_db(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {CHECKED_IN}")
