"""The database: one engine factory for every part that talks to it (the gallery, the
key store, the audit trail), connecting (SQLite pragmas, a busy database as 503) and
the Alembic migrations."""

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

# How long a SQLite writer waits for another's write lock before DatabaseBusy (503).
BUSY_TIMEOUT_SECONDS = 30.0


def make_engine(
    url: str, *, echo: bool, busy_timeout: float = BUSY_TIMEOUT_SECONDS, fsync: bool = True
) -> Engine:
    """``fsync=False`` (SQLite): commits are not fsynced (synchronous=NORMAL: in WAL mode
    a commit survives the process's crash, not a power cut, until the next fsync);
    the audit trail's read events use such an engine (app/privacy/trail.py)."""
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
# The newest revision under MIGRATIONS (a test holds it to Alembic's own answer). A
# database already there is not handed to Alembic at all: importing it and loading its
# nine scripts took ~0.2 s of every start, twice (issue 41).
HEAD_REVISION = "0009"


def migrate(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to the newest Alembic revision (or ``revision``: the migration
    tests build databases of earlier schemas); returns it. Several worker
    processes may start on a fresh database at once: the loser of a race retries and
    then finds the schema already current."""
    if revision == "head" and current_revision(engine) == HEAD_REVISION:
        return HEAD_REVISION
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


class Database:
    """One database: its URL, its engine, and the engines of its other users made from
    the same URL and rules (the audit trail's writer, the key store)."""

    def __init__(
        self, url: str, *, echo: bool = False, busy_timeout: float = BUSY_TIMEOUT_SECONDS
    ) -> None:
        """Connect; nothing is read or written (see :meth:`migrate`). ``busy_timeout``:
        how long a SQLite writer waits for another's lock before DatabaseBusy."""
        self.url = url
        self.busy_timeout = busy_timeout
        self.engine: Engine = make_engine(url, echo=echo, busy_timeout=busy_timeout)

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql"."""
        return str(self.engine.dialect.name)

    def engine_for(self, *, fsync: bool, busy_timeout: float) -> Engine:
        """Another engine on this database, with its own wait for SQLite's lock and
        (``fsync=False``) commits that do not wait for the disk."""
        return make_engine(self.url, echo=False, fsync=fsync, busy_timeout=busy_timeout)

    def migrate(self, revision: str = "head") -> str:
        """Apply the schema migrations up to ``revision``; returns the revision reached."""
        return migrate(self.engine, revision)

    def schema_revision(self) -> str | None:
        """The database's schema revision; None if it was never migrated."""
        return current_revision(self.engine)

    def ping(self) -> None:
        """Raise if the database cannot answer a query."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self.engine.dispose()
