"""The database's side of erasure (issue 27): after a delete, the embedding's bytes go
from the database's files too, not only from its tables (app/privacy/erasure.py decides
when).

SQLite. ``secure_delete`` (set on every connection, app/gallery/database.py) makes
SQLite overwrite deleted content with zeros; the page that still held it lives on in
the WAL file until a checkpoint copies the WAL back and truncates it
(:func:`checkpoint`).

PostgreSQL. A deleted row stays in its heap page (and any index on it) until VACUUM
prunes it (:func:`vacuum`). Measured (tests/privacy/test_erasure.py): a plain VACUUM
compacts the page, but the space it frees can keep the deleted row's bytes until a
later row reuses it. ``VACUUM FULL`` rewrites the tables into new files and leaves
none; it locks them while it runs (docs/PRIVACY.md has the costs). PostgreSQL's WAL
keeps the bytes until its segments are recycled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from sqlalchemy import text

from app.gallery.database import Database

log = logging.getLogger("faceverify.erasure")

# Checkpoint attempts after a delete, and the pause between them.
CHECKPOINT_TRIES = 20
CHECKPOINT_PAUSE = 0.05
CHECKPOINT_WAIT_MS = 50
# The gallery's tables that hold embeddings (a vector backend may name more).
EMBEDDING_TABLES = ("faces",)


def checkpoint(database: Database) -> bool:
    """SQLite: copy the WAL into the database file and truncate it, retrying while a
    reader holds an older snapshot; True when done."""
    for _ in range(CHECKPOINT_TRIES):
        with database.engine.connect() as conn:
            # TRUNCATE waits for readers through the busy handler: a short wait a try,
            # not the 30 s a writer gets (a long read would hold the delete).
            conn.exec_driver_sql(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            try:
                busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={int(database.busy_timeout * 1000)}")
        if not busy:
            return True
        time.sleep(CHECKPOINT_PAUSE)
    log.warning("the WAL checkpoint after a delete waits for a reader; retried later")
    return False


def vacuum(database: Database, tables: Sequence[str], *, full: bool = False) -> None:
    """PostgreSQL: VACUUM ``tables``: dead rows are pruned from their pages and the
    indexes; ``full``: the tables are rewritten into new files (no stale bytes left; an
    exclusive lock while it runs)."""
    if database.dialect != "postgresql":
        return
    started = time.monotonic()
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(text(f"VACUUM {'FULL ' if full else ''}{table}"))
    log.info("vacuumed %s after deletes in %.2f s", ", ".join(tables), time.monotonic() - started)
