"""Collections: written through a transaction (:class:`CollectionRows`), read by key
(:class:`CollectionReads`)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.errors import CollectionExists, CollectionNotFound
from app.gallery.models import (
    ApiKey,
    DeletedCollection,
    Face,
    IdempotencyRecord,
    RevokedEnvKey,
    Subject,
)
from app.gallery.models import Collection as CollectionRow
from app.gallery.records import CollectionPolicy, CollectionRecord

if TYPE_CHECKING:
    from app.gallery.unit import Transaction

# The columns PATCH /collections may set.
SETTABLE = ("retention_days", "consent_required", "identify_fpir", "verify_max_fmr")


def _record(row: CollectionRow, subjects: int = 0, faces: int = 0) -> CollectionRecord:
    return CollectionRecord(
        row.id,
        row.created_at,
        subjects,
        faces,
        row.retention_days,
        bool(row.consent_required),
        row.identify_fpir,
        row.verify_max_fmr,
    )


class CollectionRows:
    """A transaction's collection rows."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.session = tx.session

    def policy(self, collection: str) -> CollectionPolicy:
        """The collection's rules as this transaction sees them (CollectionNotFound)."""
        row = self.session.get(CollectionRow, collection)
        if row is None:
            raise CollectionNotFound.for_id(collection)
        return CollectionPolicy(
            row.retention_days,
            bool(row.consent_required),
            False,
            row.identify_fpir,
            row.verify_max_fmr,
        )

    def exists(self, collection: str) -> bool:
        return self.session.get(CollectionRow, collection) is not None

    def create(self, collection: str, **settings: Any) -> CollectionRecord:
        """An empty collection with ``settings`` (SETTABLE); CollectionExists."""
        if self.session.get(CollectionRow, collection) is not None:
            raise CollectionExists(
                f"Collection {collection!r} already exists.", collection=collection
            )
        row = CollectionRow(id=collection, created_at=datetime.now(UTC), **settings)
        self.session.add(row)
        self.session.execute(delete(DeletedCollection).where(DeletedCollection.id == collection))
        self.session.flush()
        self.tx.log.add("create_collection", collection)
        return _record(row)

    def update(self, collection: str, **settings: Any) -> CollectionRecord:
        """Set ``settings`` (SETTABLE); a version of its own, so cached schedules are
        read again. CollectionNotFound."""
        row = self.session.get(CollectionRow, collection)
        if row is None:
            raise CollectionNotFound.for_id(collection)
        for name, value in settings.items():
            if name not in SETTABLE:
                raise TypeError(f"a collection has no setting {name!r}")
            setattr(row, name, value)
        self.tx.log.add("create_collection", collection)
        return _record(row)

    def delete(self, collection: str, now: datetime) -> CollectionRecord:
        """The collection, every subject and face of it gone, and recorded as deleted
        (nothing but an admin's create brings it back). CollectionNotFound."""
        row = self.session.get(CollectionRow, collection)
        if row is None:
            raise CollectionNotFound.for_id(collection)
        faces = self.session.execute(delete(Face).where(Face.collection_id == collection))
        subjects = self.session.execute(delete(Subject).where(Subject.collection_id == collection))
        self.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.collection_id == collection)
        )
        self.session.execute(delete(DeletedCollection).where(DeletedCollection.id == collection))
        self.session.add(DeletedCollection(id=collection, deleted_at=now))
        n_subjects, n_faces = subjects.rowcount, faces.rowcount  # type: ignore[attr-defined]
        record = CollectionRecord(row.id, row.created_at, int(n_subjects), int(n_faces))
        self.session.delete(row)
        self.tx.log.add("delete_collection", collection)
        return record

    def revoke_keys(self, collection: str, env_key_hashes: Collection[str], now: datetime) -> None:
        """Revoke the API keys bound to ``collection``: the database's, and
        ``env_key_hashes`` (the sha256 of the FACEVERIFY_API_KEYS keys bound to it, kept
        as revoked), so a new collection of the same name never inherits them."""
        self.session.execute(
            update(ApiKey)
            .where(ApiKey.collection_id == collection, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        wanted = sorted(set(env_key_hashes))
        known = set(
            self.session.scalars(
                select(RevokedEnvKey.key_sha256).where(RevokedEnvKey.key_sha256.in_(wanted))
            ).all()
        )
        for hashed in sorted(set(wanted) - known):
            self.session.add(
                RevokedEnvKey(key_sha256=hashed, collection_id=collection, revoked_at=now)
            )


class CollectionReads:
    """Collections read by key, with their counts."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, *, collection: str) -> CollectionRecord:
        found = self.all(only=collection)
        if not found:
            raise CollectionNotFound.for_id(collection)
        return found[0]

    def exists(self, *, collection: str) -> bool:
        with Session(self.engine) as session:
            return session.get(CollectionRow, collection) is not None

    def deleted(self, *, collection: str) -> bool:
        """Whether the collection was deleted and not created again since."""
        with Session(self.engine) as session:
            return session.get(DeletedCollection, collection) is not None

    def all(self, *, only: str | None = None) -> list[CollectionRecord]:
        """Every collection (or just ``only``) with its subject and face counts, by id."""
        subjects = (
            select(Subject.collection_id, func.count().label("n"))
            .group_by(Subject.collection_id)
            .subquery()
        )
        faces = (
            select(Face.collection_id, func.count().label("n"))
            .group_by(Face.collection_id)
            .subquery()
        )
        stmt = (
            select(CollectionRow, func.coalesce(subjects.c.n, 0), func.coalesce(faces.c.n, 0))
            .outerjoin(subjects, subjects.c.collection_id == CollectionRow.id)
            .outerjoin(faces, faces.c.collection_id == CollectionRow.id)
            .order_by(CollectionRow.id)
        )
        if only is not None:
            stmt = stmt.where(CollectionRow.id == only)
        with Session(self.engine) as session:
            return [_record(r[0], int(r[1]), int(r[2])) for r in session.execute(stmt).all()]

    def policy(self, *, collection: str) -> CollectionPolicy:
        """A collection's retention days, consent rule, whether any of its subjects has
        an expiry date, and its decision rates (CollectionNotFound)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    CollectionRow.retention_days,
                    CollectionRow.consent_required,
                    CollectionRow.identify_fpir,
                    CollectionRow.verify_max_fmr,
                ).where(CollectionRow.id == collection)
            ).first()
            if row is None:
                raise CollectionNotFound.for_id(collection)
            dated = conn.execute(
                select(Subject.id)
                .where(Subject.collection_id == collection, Subject.expires_at.is_not(None))
                .limit(1)
            ).first()
        return CollectionPolicy(row[0], bool(row[1]), dated is not None, row[2], row[3])

    def schedules(self) -> list[tuple[str, int]]:
        """(collection, retention days) of every collection with a schedule."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(CollectionRow.id, CollectionRow.retention_days).where(
                    CollectionRow.retention_days.is_not(None)
                )
            ).all()
        return [(r[0], int(r[1] or 0)) for r in rows]
