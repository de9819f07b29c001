"""The gallery's durable store: collections, their subjects and face embeddings in SQL.

SQLite (WAL) by default; any SQLAlchemy URL works (PostgreSQL for several replicas).
:class:`Gallery` reads by key through its read repositories (``gallery.subjects``,
``.faces``, ``.collections``, ``.changes``, ``.idempotency``) and writes through a unit
of work the caller opens (:meth:`Gallery.transaction`, app/gallery/unit.py): every
write bumps the gallery version and logs which ids it touched, so in-memory indexes in
other threads or processes catch up (``gallery.changes.changes_since``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from app.gallery.changes import ChangeLog
from app.gallery.collections import CollectionReads
from app.gallery.crypto import Sealing
from app.gallery.database import Database
from app.gallery.faces import FaceReads
from app.gallery.idempotency import IdempotencyReads
from app.gallery.subjects import SubjectReads
from app.gallery.unit import BUSY, Mirror, Participant, Transaction, transaction
from app.gallery.users import UserReads


class Gallery:
    """Collections, their subjects and faces in one database. Subject ids are unique
    within a collection; every subject method names its collection. Read methods take
    keyword arguments only and return plain records, never ORM objects."""

    def __init__(self, database: Database, sealing: Sealing | None = None) -> None:
        """Nothing is read or written (see :meth:`open`)."""
        self.database = database
        # Shared with every repository: a key rotation's new policy is seen at once.
        self.sealing = sealing or Sealing()
        # The vector backend's write side, joined to every versioned write (set by
        # app/service/build.py when it picks a backend that keeps rows of its own).
        self.mirror: Mirror | None = None
        engine = database.engine
        self.collections = CollectionReads(engine)
        self.subjects = SubjectReads(engine, self.sealing)
        self.faces = FaceReads(engine, self.sealing)
        self.changes = ChangeLog(engine)
        self.idempotency = IdempotencyReads(engine)
        self.users = UserReads(engine)

    @classmethod
    def connect(cls, url: str) -> Gallery:
        """Connect; nothing is read or written (the schema is not migrated)."""
        return cls(Database(url))

    @classmethod
    def open(cls, url: str) -> Gallery:
        """Connect and bring the schema to the newest revision: what a server does."""
        database = Database(url)
        database.migrate()
        return cls(database)

    def transaction(
        self,
        *,
        audit: Participant | None = None,
        lock_timeout: float | None = BUSY,
        versioned: bool = True,
    ) -> AbstractContextManager[Transaction]:
        """One write (app/gallery/unit.py): ``audit``, the event that commits with it."""
        return transaction(
            self.database,
            self.sealing,
            self.mirror,
            audit=audit,
            lock_timeout=lock_timeout,
            versioned=versioned,
        )

    def close(self) -> None:
        self.database.close()
