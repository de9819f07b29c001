"""The change log: every write bumps the gallery version and logs which ids it touched,
so the in-memory indexes of other threads and processes catch up by replaying it
(app/vectors/sync.py); and the index snapshots registered against it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast, get_args

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.gallery.models import (
    GalleryEvent,
    GalleryState,
    IndexSnapshotRecord,
)
from app.gallery.records import Change, ChangeKind

# How many versions of change log to keep. A process further behind than this reloads
# the whole gallery instead of replaying; pruning keeps deleted subjects' ids from
# lingering in the log.
EVENT_RETENTION = 10_000

# Index snapshot records kept (each process may still hold an older one mapped).
SNAPSHOT_RECORDS = 16

_VERSION_SQL = f"SELECT {GalleryState.version.key} FROM {GalleryState.__tablename__}"  # noqa: S608


def bump_version(session: Session, lock_timeout: float | None) -> int:
    """The first statement of every write transaction: it takes the write lock (SQLite)
    or the row lock (PostgreSQL) at once, so writers queue here and versions are handed
    out in commit order; a reader that has seen version v has seen every write <= v. On
    PostgreSQL a writer waits for the row at most ``lock_timeout`` s (then
    DatabaseBusy, as SQLite's busy timeout gives); None: as long as it takes."""
    if lock_timeout is not None and session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout * 1000)}"))
    return int(
        session.execute(
            update(GalleryState)
            .where(GalleryState.id == 1)
            .values(version=GalleryState.version + 1)
            .returning(GalleryState.version)
        ).scalar_one()
    )


class ChangeRows:
    """A transaction's change-log entries, written when it commits. Every version has
    its change: a gap in the log makes every process reload every index (issue 25: 47 s
    on a 1.8M-face server after POST /collections)."""

    def __init__(self, session: Session, version: int) -> None:
        self.session = session
        self.version = version
        self.entries: list[Change] = []

    def add(
        self, kind: ChangeKind, collection: str, subject_id: str = "", face_id: str | None = None
    ) -> None:
        self.entries.append(Change(self.version, kind, collection, subject_id, face_id))

    def write(self) -> None:
        if not self.entries or not self.version:
            return
        self.session.execute(
            insert(GalleryEvent),
            [
                {
                    "version": c.version,
                    "kind": c.kind,
                    "collection_id": c.collection,
                    "subject_id": c.subject_id,
                    "face_id": c.face_id,
                }
                for c in self.entries
            ],
        )
        self.session.execute(
            delete(GalleryEvent).where(GalleryEvent.version <= self.version - EVENT_RETENTION)
        )


def _change_kind(kind: str) -> ChangeKind:
    if kind not in get_args(ChangeKind):
        raise ValueError(f"unknown change kind {kind!r} in the gallery log")
    return cast(ChangeKind, kind)


class ChangeLog:
    """Reading the gallery version and the change log; the snapshot records."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def version(self) -> int:
        """The gallery's version (bumped by every write). Read on every verify and
        search, so through the driver's own cursor: 11 us against 57 through
        SQLAlchemy's statement layer, and little of it holding the GIL."""
        conn = self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(_VERSION_SQL)
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            conn.close()  # back to the pool, which ends the read transaction
        if row is None:
            raise RuntimeError("the gallery_state row is missing (run the migrations)")
        return int(row[0])

    def instance(self) -> str:
        """This database's random id (migration 0004)."""
        with self.engine.connect() as conn:
            return str(conn.execute(select(GalleryState.instance)).scalar_one())

    def register_snapshot(self, *, token: str, version: int, digest: str) -> None:
        """Record an index snapshot saved from this database (app/vectors/snapshot.py);
        records of older snapshots than the last few are dropped."""
        with Session(self.engine) as session, session.begin():
            session.add(
                IndexSnapshotRecord(
                    token=token, version=version, digest=digest, created_at=datetime.now(UTC)
                )
            )
            keep = (
                select(IndexSnapshotRecord.token)
                .order_by(IndexSnapshotRecord.created_at.desc())
                .limit(SNAPSHOT_RECORDS)
            )
            session.execute(
                delete(IndexSnapshotRecord).where(IndexSnapshotRecord.token.not_in(keep))
            )

    def snapshot_registered(self, *, token: str) -> tuple[int, str] | None:
        """(version, manifest sha256) of a snapshot this database registered, or None."""
        with Session(self.engine) as session:
            row = session.get(IndexSnapshotRecord, token) if token else None
            return None if row is None else (int(row.version), row.digest)

    def changes_since(self, *, version: int) -> list[Change] | None:
        """The changes made after ``version``, oldest first; None if the log no longer
        reaches back that far, or ``version`` is ahead of the database's (a backup was
        restored): then reload everything."""
        with self.engine.connect() as conn:
            if version > int(conn.execute(select(GalleryState.version)).scalar_one()):
                return None
            rows = conn.execute(
                select(
                    GalleryEvent.version,
                    GalleryEvent.kind,
                    GalleryEvent.collection_id,
                    GalleryEvent.subject_id,
                    GalleryEvent.face_id,
                )
                .where(GalleryEvent.version > version)
                .order_by(GalleryEvent.version, GalleryEvent.id)
            ).all()
        if rows and rows[0].version != version + 1:
            return None
        return [
            Change(r.version, _change_kind(r.kind), r.collection_id, r.subject_id, r.face_id)
            for r in rows
        ]
