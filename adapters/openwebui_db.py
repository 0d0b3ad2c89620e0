"""Reading an Open WebUI deployment: its database (SQLite ``webui.db``, or Postgres by URL: the same tables)
and its uploads directory. Only reads: the SQLite file is opened immutable (it may sit on a read-only disk,
in WAL mode), a Postgres session read-only."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from application.openwebui_import import OPENWEBUI_TABLES, OpenWebUIData

__all__ = ["OpenWebUISourceError", "read_openwebui"]


class OpenWebUISourceError(Exception):
    """The database or the uploads directory cannot be read as an Open WebUI deployment's."""


@contextmanager
def _sqlite(path: Path) -> Iterator[Any]:
    if not path.is_file():
        raise OpenWebUISourceError(f"no Open WebUI database at {path}")
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?immutable=1", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _postgres(url: str) -> Iterator[Any]:
    import psycopg
    from psycopg.rows import dict_row

    try:
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), row_factory=dict_row)
    except psycopg.Error as e:
        raise OpenWebUISourceError(f"cannot connect to the Open WebUI database: {e}") from None
    conn.read_only = True
    try:
        yield conn
    finally:
        conn.close()


def _tables(conn: Any, postgres: bool) -> set[str]:
    if postgres:
        rows = conn.execute(
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    else:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {str(r["name"]) for r in rows}


def read_openwebui(db: str, uploads: str | Path) -> OpenWebUIData:
    """Every row of the tables the import reads, and a reader of the uploaded files by their stored path."""
    postgres = db.startswith(("postgres://", "postgresql://", "postgresql+psycopg://"))
    uploads_dir = Path(uploads)
    if not uploads_dir.is_dir():
        raise OpenWebUISourceError(f"no uploads directory at {uploads_dir}")
    opened = _postgres(db) if postgres else _sqlite(Path(db))
    try:
        with opened as conn:
            present = _tables(conn, postgres)
            if not {"user", "auth", "chat"} <= present:
                raise OpenWebUISourceError(f"{db} is not an Open WebUI database (no user, auth and chat tables)")
            rows = {
                t: [dict(r) for r in conn.execute(f'SELECT * FROM "{t}"')] if t in present else []
                for t in OPENWEBUI_TABLES
            }
            version = (
                next(iter(conn.execute("SELECT version_num FROM alembic_version")), None)
                if "alembic_version" in present
                else None
            )
            counts = {
                t: int(next(iter(conn.execute(f'SELECT count(*) AS n FROM "{t}"')))["n"]) for t in sorted(present)
            }
    except sqlite3.Error as e:
        raise OpenWebUISourceError(f"cannot read the Open WebUI database {db}: {e}") from None

    def read_upload(stored_path: str) -> bytes | None:
        """A file Open WebUI stored (its ``file.path`` names its own data directory): by its name, in ``uploads``."""
        candidate = uploads_dir / Path(stored_path).name
        return candidate.read_bytes() if candidate.is_file() else None

    return OpenWebUIData(
        rows=rows,
        table_counts=counts,
        schema_version=str(version["version_num"]) if version is not None else None,
        read_upload=read_upload,
    )
