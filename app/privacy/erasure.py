"""Erasure that leaves nothing (issue 27): after a delete, before its answer, the
embeddings' bytes go from every file that held them: the vector backend's (index
snapshots) and the database's (app/gallery/erasure.py: SQLite's WAL checkpoint,
PostgreSQL's VACUUM).

SQLite: a checkpoint after every delete, retrying while a reader holds an older
snapshot; one that could not finish is retried by :meth:`Erasure.upkeep`. PostgreSQL:
:meth:`Erasure.erased` marks a vacuum due; :meth:`Erasure.upkeep`, run by the service's
background thread every few seconds, vacuums the tables that hold embeddings once the
last delete is ``vacuum_delay`` seconds old (default 30), so a deleted embedding is
pruned from every index within that bound plus the vacuum's own time. ``vacuum_full``
rewrites the tables into new files and leaves no stale bytes (docs/PRIVACY.md).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from app.gallery import Database
from app.gallery.erasure import EMBEDDING_TABLES, checkpoint, vacuum
from app.vectors import VectorBackend
from app.vectors.pgvector import PgvectorSearch, table_exists
from app.vectors.snapshot import erase_rows


class Erasure:
    def __init__(
        self,
        database: Database,
        vectors: VectorBackend | None = None,
        *,
        index_dir: Path | None = None,
        vacuum_delay: float = 30.0,
        vacuum_full: bool = False,
    ) -> None:
        """``vectors``: the service's backend, which erases its own files; None (the
        command line): the snapshots under ``index_dir`` are erased here."""
        self.database = database
        self.vectors = vectors
        self.index_dir = index_dir
        self.vacuum_delay = vacuum_delay
        self.vacuum_full = vacuum_full
        self._lock = threading.Lock()
        self._pending: float | None = None  # monotonic time of the first delete not erased

    def erased(self, face_ids: list[str], collection: str | None = None) -> bool:
        """Rows were deleted (``face_ids``, or a whole ``collection``'s): their bytes go
        from the files. True when done now (SQLite's checkpoint finished); False when it
        is left to :meth:`upkeep`."""
        if self.vectors is not None:
            self.vectors.erase(face_ids, collection)
        elif self.index_dir is not None:
            erase_rows(self.index_dir, face_ids, collection=collection)
        with self._lock:
            if self._pending is None:
                self._pending = time.monotonic()
        if self.database.dialect == "sqlite":
            return self._checkpoint()
        return False

    def upkeep(self) -> None:
        """The erasure left over: a checkpoint that could not finish, a vacuum due."""
        with self._lock:
            since = self._pending
        if since is None:
            return
        if self.database.dialect == "sqlite":
            self._checkpoint()
        elif time.monotonic() - since >= self.vacuum_delay:
            self.vacuum(full=self.vacuum_full)

    def _checkpoint(self) -> bool:
        done = checkpoint(self.database)
        if done:
            with self._lock:
                self._pending = None
        return done

    def vacuum(self, *, full: bool = False) -> None:
        """VACUUM every table that holds embeddings (PostgreSQL)."""
        with self._lock:
            self._pending = None
        vector_tables = (
            self.vectors.tables
            if self.vectors is not None
            else PgvectorSearch.tables
            if table_exists(self.database)
            else ()
        )
        vacuum(self.database, [*EMBEDDING_TABLES, *vector_tables], full=full)
