"""Erasure that leaves nothing (issue 27): after a delete, the embedding's bytes go from
the database's files too, not only from its tables.

SQLite. ``secure_delete`` (set on every connection, app/gallery/engine.py) makes SQLite
overwrite deleted content with zeros; the page that still held it lives on in the WAL
file until a checkpoint copies the WAL back and truncates it. :meth:`Erasure.erased`
checkpoints (TRUNCATE) after every delete, retrying while a reader holds an older
snapshot; one it could not finish is retried by :meth:`Erasure.upkeep`.

PostgreSQL. A deleted row stays in its heap page (and pgvector's index) until VACUUM
prunes it. :meth:`Erasure.erased` marks a vacuum due; :meth:`Erasure.upkeep`, run by
the service's background thread every few seconds, vacuums ``faces`` and
``face_vectors`` once the last one is ``vacuum_delay`` seconds old (default 30), so a
deleted embedding is pruned from every index and the HNSW graph within that bound plus
the vacuum's own time. Measured (tests/privacy/test_erasure.py): a plain VACUUM
compacts the page, but the space it frees can keep the deleted row's bytes until a
later row reuses it (deleting the newest row of a page left them there). ``VACUUM
FULL`` (``vacuum_full``, or ``faceverify db vacuum --full``) rewrites the tables into
new files and leaves none; it locks them while it runs (docs/PRIVACY.md has the costs).
PostgreSQL's WAL keeps the bytes until its segments are recycled.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import text

from app.gallery.engine import StoreBase

log = logging.getLogger("faceverify.erasure")

# Checkpoint attempts after a delete, and the pause between them.
CHECKPOINT_TRIES = 20
CHECKPOINT_PAUSE = 0.05
CHECKPOINT_WAIT_MS = 50


class Erasure(StoreBase):
    _erase_lock: threading.Lock
    _erase_pending: float | None  # monotonic time of the first delete not yet erased
    vacuum_delay: float
    vacuum_full: bool

    def erased(self, *, face_ids: list[str] | None = None) -> bool:
        """Rows were deleted: make their bytes go from the files. True when done now
        (SQLite's checkpoint finished); False when it is left to :meth:`upkeep`."""
        with self._erase_lock:
            if self._erase_pending is None:
                self._erase_pending = time.monotonic()
        if self.engine.dialect.name == "sqlite":
            return self._checkpoint()
        return False

    def upkeep(self) -> None:
        """The erasure left over: a checkpoint that could not finish, a vacuum due."""
        with self._erase_lock:
            since = self._erase_pending
        if since is None:
            return
        if self.engine.dialect.name == "sqlite":
            self._checkpoint()
        elif time.monotonic() - since >= self.vacuum_delay:
            self.vacuum(full=self.vacuum_full)

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate it."""
        for _ in range(CHECKPOINT_TRIES):
            with self.engine.connect() as conn:
                # TRUNCATE waits for readers through the busy handler: a short wait a
                # try, not the 30 s a writer gets (a long read would hold the delete).
                conn.exec_driver_sql(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
                try:
                    busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                finally:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            if not busy:
                with self._erase_lock:
                    self._erase_pending = None
                return True
            time.sleep(CHECKPOINT_PAUSE)
        log.warning("the WAL checkpoint after a delete waits for a reader; retried later")
        return False

    def vacuum(self, *, full: bool = False) -> None:
        """VACUUM the tables that hold embeddings (PostgreSQL): dead rows are pruned from
        their pages and the indexes; ``full``: the tables are rewritten into new files
        (no stale bytes left; an exclusive lock while it runs)."""
        if self.engine.dialect.name != "postgresql":
            return
        with self._erase_lock:
            self._erase_pending = None
        tables = ["faces"]
        if self.vector_dim is not None:
            tables.append("face_vectors")
        started = time.monotonic()
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in tables:
                conn.execute(text(f"VACUUM {'FULL ' if full else ''}{table}"))
        log.info(
            "vacuumed %s after deletes in %.2f s", ", ".join(tables), time.monotonic() - started
        )
