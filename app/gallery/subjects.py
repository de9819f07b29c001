"""Subjects: written through a transaction (:class:`SubjectRows`), read by key
(:class:`SubjectReads`)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.errors import InvalidRequest, SubjectExists, SubjectNotFound
from app.gallery.crypto import Sealing
from app.gallery.ids import check_stored_subject_id
from app.gallery.models import Face, Subject, embedding_matrix
from app.gallery.records import SubjectRecord, SubjectTimes, subject_record

if TYPE_CHECKING:
    from app.gallery.unit import Transaction

# The fields of a subject an enrollment may set.
WRITABLE = ("name", "meta", "consent", "expires_at", "last_used_at")


def of_subject(collection: str, subject_id: str) -> tuple[Any, Any]:
    """WHERE clauses for one subject's faces."""
    return Face.collection_id == collection, Face.subject_id == subject_id


def face_count(session: Session, collection: str, subject_id: str) -> int:
    stmt = select(func.count()).select_from(Face).where(*of_subject(collection, subject_id))
    return int(session.scalar(stmt) or 0)


class SubjectRows:
    """A transaction's subject rows."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.session = tx.session

    def get(self, collection: str, subject_id: str) -> SubjectRecord | None:
        subject = self.session.get(Subject, (collection, subject_id))
        if subject is None:
            return None
        return subject_record(subject, face_count(self.session, collection, subject_id))

    def create(self, collection: str, subject_id: str, **fields: Any) -> None:
        """A new subject (SubjectExists); its id must be one the API can address (every
        path that creates a subject applies the API's rules, issue 37)."""
        if self.session.get(Subject, (collection, subject_id)) is not None:
            raise SubjectExists(
                f"Subject {subject_id!r} already exists; send add=true to add faces to it.",
                subject_id=subject_id,
            )
        try:
            check_stored_subject_id(subject_id)
        except ValueError as exc:
            raise InvalidRequest(f"Not a subject id the API can address: {exc}.") from exc
        _check_writable(fields)
        # Given to the constructor, so a None is stored as the column's type stores it
        # (JSON null for metadata), as enrollments always have.
        self.session.add(Subject(collection_id=collection, id=subject_id, **fields))
        self.session.flush()

    def update(self, collection: str, subject_id: str, **fields: Any) -> None:
        """Set ``fields`` (WRITABLE; None leaves one as it is). SubjectNotFound."""
        subject = self.session.get(Subject, (collection, subject_id))
        if subject is None:
            raise SubjectNotFound.for_id(subject_id)
        _check_writable(fields)
        for name, value in fields.items():
            if value is not None:
                setattr(subject, name, value)

    def create_many(self, rows: list[dict[str, Any]], batch: int) -> None:
        """New subjects, ``batch`` rows a statement (an import's)."""
        for start in range(0, len(rows), batch):
            self.session.execute(insert(Subject), rows[start : start + batch])

    def times(self, collection: str) -> dict[str, SubjectTimes]:
        """Every subject of the collection's retention times (an import's check)."""
        stmt = select(Subject.id, Subject.created_at, Subject.last_used_at, Subject.expires_at)
        stmt = stmt.where(Subject.collection_id == collection)
        return {r[0]: SubjectTimes(r[1], r[2], r[3]) for r in self.session.execute(stmt)}

    def delete(self, collection: str, subject_id: str) -> list[str]:
        """The subject and every face of it; the deleted face ids (SubjectNotFound)."""
        if self.session.get(Subject, (collection, subject_id)) is None:
            raise SubjectNotFound.for_id(subject_id)
        where = of_subject(collection, subject_id)
        face_ids = list(self.session.scalars(select(Face.id).where(*where)).all())
        self.session.execute(delete(Face).where(*where))
        self.session.execute(
            delete(Subject).where(Subject.collection_id == collection, Subject.id == subject_id)
        )
        self.tx.log.add("delete_subject", collection, subject_id)
        return face_ids

    def touch(self, collection: str, subject_id: str, now: datetime) -> None:
        """Restart a subject's retention clock (never back in time)."""
        self.session.execute(
            update(Subject)
            .where(
                Subject.collection_id == collection,
                Subject.id == subject_id,
                (Subject.last_used_at.is_(None)) | (Subject.last_used_at < now),
            )
            .values(last_used_at=now)
        )


class SubjectReads:
    """Subjects read by key."""

    def __init__(self, engine: Engine, sealing: Sealing) -> None:
        self.engine = engine
        self.sealing = sealing

    def get(self, *, collection: str, subject_id: str) -> SubjectRecord:
        with Session(self.engine) as session:
            subject = session.get(Subject, (collection, subject_id))
            if subject is None:
                raise SubjectNotFound.for_id(subject_id)
            return subject_record(subject, face_count(session, collection, subject_id))

    def embeddings(
        self, *, collection: str, subject_id: str, dim: int, encoders: Collection[str]
    ) -> tuple[list[str], np.ndarray, list[str], SubjectTimes]:
        """One subject's face ids, ``(n, dim)`` embeddings made by ``encoders`` and
        pipeline versions, and its retention times, read by key in one indexed query:
        what verify needs, at a cost that does not depend on the gallery's size. n may
        be 0 (every face deleted, or of another model). SubjectNotFound."""
        stmt = (
            select(
                Subject.id,
                Face.id,
                Face.embedding,
                Face.pipeline_version,
                Face.key_id,
                Subject.created_at,
                Subject.last_used_at,
                Subject.expires_at,
            )
            .outerjoin(
                Face,
                (Face.collection_id == Subject.collection_id)
                & (Face.subject_id == Subject.id)
                & Face.encoder.in_(sorted(encoders)),
            )
            .where(Subject.collection_id == collection, Subject.id == subject_id)
            .order_by(Face.id)
        )
        with self.engine.connect() as conn:
            rows = list(conn.execute(stmt).all())
        if not rows:
            raise SubjectNotFound.for_id(subject_id)
        opened = [
            (r, self.sealing.open(r[2], (r[1], collection, subject_id), r[4]))
            for r in rows
            if r[1] is not None
        ]
        found = [(r, data) for r, data in opened if data is not None]
        matrix = embedding_matrix([data for _, data in found], dim).astype(np.float32)
        times = SubjectTimes(rows[0][5], rows[0][6], rows[0][7])
        return [r[1] for r, _ in found], matrix, [r[3] for r, _ in found], times

    def face_bytes(self, *, collection: str, subject_id: str) -> dict[str, bytes]:
        """Each face of the subject's embedding, as stored plain bytes (decrypted)."""
        stmt = select(Face.id, Face.embedding, Face.key_id).where(
            *of_subject(collection, subject_id)
        )
        with self.engine.connect() as conn:
            opened = {
                r[0]: self.sealing.open(r[1], (r[0], collection, subject_id), r[2])
                for r in conn.execute(stmt)
            }
        return {face: data for face, data in opened.items() if data is not None}

    def page(
        self, *, collection: str, offset: int, limit: int, prefix: str | None = None
    ) -> tuple[list[SubjectRecord], int]:
        """A page of a collection's subjects ordered by id, and the total count (matching
        ``prefix``)."""
        where = [Subject.collection_id == collection]
        if prefix:
            where.append(Subject.id.startswith(prefix, autoescape=True))
        counts = (
            select(Face.subject_id, func.count().label("n"))
            .where(Face.collection_id == collection)
            .group_by(Face.subject_id)
            .subquery()
        )
        with Session(self.engine) as session:
            total = session.scalar(select(func.count()).select_from(Subject).where(*where))
            rows = session.execute(
                select(Subject, func.coalesce(counts.c.n, 0))
                .outerjoin(counts, counts.c.subject_id == Subject.id)
                .where(*where)
                .order_by(Subject.id)
                .offset(offset)
                .limit(limit)
            ).all()
            return [subject_record(row[0], int(row[1])) for row in rows], int(total or 0)

    def times(self, *, collection: str, subject_ids: Collection[str]) -> dict[str, SubjectTimes]:
        """When each of these subjects was made, last used and expires (by key)."""
        if not subject_ids:
            return {}
        stmt = select(
            Subject.id, Subject.created_at, Subject.last_used_at, Subject.expires_at
        ).where(Subject.collection_id == collection, Subject.id.in_(sorted(subject_ids)))
        with self.engine.connect() as conn:
            return {r[0]: SubjectTimes(r[1], r[2], r[3]) for r in conn.execute(stmt).all()}

    def expired(self, *, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(collection, subject) pairs past their expiry date at ``now``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Subject.collection_id, Subject.id)
                .where(Subject.expires_at <= now)
                .limit(limit)
            ).all()
        return [(r[0], r[1]) for r in rows]

    def unused_since(self, *, collection: str, cutoff: datetime, limit: int) -> list[str]:
        """The collection's subjects not used (nor made) since ``cutoff``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Subject.id)
                .where(
                    Subject.collection_id == collection,
                    func.coalesce(Subject.last_used_at, Subject.created_at) <= cutoff,
                )
                .limit(limit)
            ).all()
        return [r[0] for r in rows]


def _check_writable(fields: dict[str, Any]) -> None:
    for name in fields:
        if name not in WRITABLE:
            raise TypeError(f"a subject has no field {name!r}")
