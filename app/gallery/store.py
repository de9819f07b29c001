"""The gallery's durable store: collections, their subjects and face embeddings in SQL.

SQLite (WAL) by default; any SQLAlchemy URL works (PostgreSQL for several replicas).
Every write is one transaction that also bumps the gallery version and logs which ids it
touched, so in-memory indexes in other threads or processes can catch up (see
:meth:`GalleryStore.changes_since`).
"""

from __future__ import annotations

import threading

from sqlalchemy.engine import Engine

from app.gallery import pgvector
from app.gallery.bulkload import BulkFaces
from app.gallery.changelog import ChangeLog
from app.gallery.crypto import OPEN, EmbeddingCipher
from app.gallery.engine import BUSY_TIMEOUT_SECONDS, _make_engine, current_revision, migrate
from app.gallery.erasure import Erasure
from app.gallery.idempotency import IdempotencyRecords
from app.gallery.reads import Reads
from app.gallery.records import (
    Change,
    ChangeKind,
    CollectionRecord,
    EmbeddingRows,
    FaceRecord,
    IdempotencyClaim,
    IdempotencyKeyTaken,
    IdempotentEnrollment,
    NewFace,
    SubjectRecord,
)
from app.gallery.writes import Writes

__all__ = [
    "Change",
    "ChangeKind",
    "CollectionRecord",
    "EmbeddingRows",
    "FaceRecord",
    "GalleryStore",
    "IdempotencyClaim",
    "IdempotencyKeyTaken",
    "IdempotentEnrollment",
    "NewFace",
    "SubjectRecord",
]


class GalleryStore(Reads, Writes, BulkFaces, ChangeLog, IdempotencyRecords, Erasure):
    """Collections, their subjects and faces in a SQL database. Subject ids are unique
    within a collection; every subject method names its collection. Methods take keyword
    arguments only and return plain records, never ORM objects.

    One class for its callers, its methods in modules by job: reads.py, writes.py,
    bulkload.py (import/export), changelog.py (versions, the change log, snapshot
    records), idempotency.py, erasure.py (bytes gone from the files after a delete);
    engine.py connects and migrates."""

    def __init__(
        self, url: str, *, echo: bool = False, busy_timeout: float = BUSY_TIMEOUT_SECONDS
    ) -> None:
        """Connect; nothing is read or written (see :meth:`open` and :meth:`migrate`).
        ``busy_timeout``: how long a SQLite writer waits for another's lock before
        DatabaseBusy."""
        self.url = url
        self.busy_timeout = busy_timeout
        self.engine: Engine = _make_engine(url, echo=echo, busy_timeout=busy_timeout)
        # Set by enable_vectors: the embedding length kept in pgvector's face_vectors.
        self.vector_dim: int | None = None
        # The ceiling on maintenance_work_mem for HNSW builds (after bulk imports).
        self.build_memory_mb = pgvector.BUILD_MEMORY_MB
        self.cipher: EmbeddingCipher | None = None
        self.seal_policy = OPEN
        # Erasure after deletes (erasure.py).
        self._erase_lock = threading.Lock()
        self._erase_pending: float | None = None
        self.vacuum_delay = 30.0
        self.vacuum_full = False

    def enable_vectors(self, *, dim: int, build_memory_mb: int | None = None) -> bool:
        """Keep and search embeddings in PostgreSQL with pgvector, if it is available
        (app/gallery/pgvector.py). True when enabled."""
        if build_memory_mb is not None:
            self.build_memory_mb = build_memory_mb
        if pgvector.enable(self.engine, dim=dim, build_memory_mb=self.build_memory_mb):
            self.vector_dim = dim
        return self.vector_dim is not None

    @classmethod
    def open(cls, url: str, *, echo: bool = False) -> GalleryStore:
        """Connect and bring the schema to the newest revision: what a server does."""
        store = cls(url, echo=echo)
        store.migrate()
        return store

    def migrate(self, revision: str = "head") -> str:
        """Apply the schema migrations up to ``revision``; returns the revision reached."""
        return migrate(self.engine, revision)

    def schema_revision(self) -> str | None:
        """The database's schema revision; None if it was never migrated."""
        return current_revision(self.engine)

    def close(self) -> None:
        self.engine.dispose()
