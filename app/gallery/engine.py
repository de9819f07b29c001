"""The store's engine and schema: connecting (SQLite pragmas, a busy database as 503)
and the Alembic migrations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from app.errors import (
    DatabaseBusy,
)
from app.gallery.crypto import EmbeddingCipher, SealPolicy

# How long a SQLite writer waits for another's write lock before DatabaseBusy (503).
BUSY_TIMEOUT_SECONDS = 30.0


def _make_engine(
    url: str, *, echo: bool, busy_timeout: float = BUSY_TIMEOUT_SECONDS, fsync: bool = True
) -> Engine:
    """``fsync=False`` (SQLite): commits are not fsynced (synchronous=NORMAL: in WAL mode
    a commit survives the process's crash, not a power cut, until the next fsync);
    the audit trail's read events use such an engine (app/gallery/trail.py)."""
    if not url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, pool_pre_ping=True)
        _busy_is_503(engine, busy_timeout)
        return engine
    database = url.split("///", 1)[1] if "///" in url else ""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"timeout": busy_timeout})
    _busy_is_503(engine, busy_timeout)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer; several processes can share the file.
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed enrollment survives a power cut, not only a crash.
        cursor.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted content is overwritten with zeros, not left in free space (issue 27:
        # it is on in some builds of SQLite and off in SQLite's own default).
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.close()

    return engine


def _busy_is_503(engine: Engine, busy_timeout: float) -> None:
    """Another writer (a `gallery import` of a million faces holds the write lock for its
    whole transaction) kept the lock past the wait: a clear 503 database_busy with
    Retry-After, not a 500 "database is locked" (issue 25). SQLite says so in its
    message; PostgreSQL with SQLSTATE 55P03 once the writer's lock_timeout passes
    (:func:`_bump_version`)."""

    @event.listens_for(engine, "handle_error")
    def _locked_is_busy(context: Any) -> None:
        error = context.original_exception
        if "database is locked" in str(error) or getattr(error, "sqlstate", None) == "55P03":
            raise DatabaseBusy(
                f"Another writer held the database for over {busy_timeout:g} s (a bulk "
                "import?); nothing was stored. Retry shortly.",
                retry_after=5,
            ) from error


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def migrate(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to the newest Alembic revision (or ``revision``: the migration
    tests build databases of earlier schemas); returns it. Several worker
    processes may start on a fresh database at once: the loser of a race retries and
    then finds the schema already current."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, revision)
            break
        except (OperationalError, IntegrityError, ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    reached = current_revision(engine)
    assert reached is not None
    return reached


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        value = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        return str(value) if value is not None else None


class StoreBase:
    """What every part of GalleryStore shares (set by GalleryStore.__init__)."""

    url: str
    engine: Engine
    busy_timeout: float
    # The embedding length kept in pgvector's face_vectors (None: not kept).
    vector_dim: int | None
    # The ceiling on maintenance_work_mem for HNSW builds (after bulk imports).
    build_memory_mb: int
    # Embeddings encrypted at rest (app/gallery/crypto.py); None: stored plain.
    cipher: EmbeddingCipher | None
    # Which rows are not faceverify's and are left out (app/gallery/sealing.py).
    seal_policy: SealPolicy
