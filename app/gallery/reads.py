"""Reading records by key: subjects, faces, collections."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import (
    CollectionNotFound,
    FaceNotFound,
    SubjectNotFound,
)
from app.gallery.crypto import readable
from app.gallery.engine import StoreBase
from app.gallery.models import (
    EMBEDDING_DTYPE,
    DeletedCollection,
    Face,
    Subject,
    embedding_matrix,
)
from app.gallery.models import Collection as CollectionRow
from app.gallery.records import (
    CollectionPolicy,
    CollectionRecord,
    FaceRecord,
    SubjectRecord,
    SubjectTimes,
    _face_record,
    _subject_record,
)


def _of_subject(collection: str, subject_id: str) -> tuple[Any, Any]:
    """WHERE clauses for one subject's faces."""
    return Face.collection_id == collection, Face.subject_id == subject_id


class Reads(StoreBase):
    """Subjects, faces and collections, read by key."""

    def ping(self) -> None:
        """Raise if the database cannot answer a query."""
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def get_subject(self, *, collection: str, subject_id: str) -> SubjectRecord:
        with Session(self.engine) as session:
            subject = session.get(Subject, (collection, subject_id))
            if subject is None:
                raise SubjectNotFound.for_id(subject_id)
            count = session.scalar(
                select(func.count()).select_from(Face).where(*_of_subject(collection, subject_id))
            )
            return _subject_record(subject, int(count or 0))

    def subject_embeddings(
        self, *, collection: str, subject_id: str, dim: int, encoders: Collection[str]
    ) -> tuple[list[str], np.ndarray, list[str], SubjectTimes]:
        """One subject's face ids, ``(n, dim)`` embeddings made by ``encoders`` and
        pipeline versions, and its retention times, read by key in one indexed query:
        what verify needs, at a cost that does not depend on the gallery's size. n may
        be 0 (every face deleted, or of another model).

        Raises:
            SubjectNotFound: no such subject in the collection.
        """
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
            rows = [r for r in conn.execute(stmt).all()]
        if not rows:
            raise SubjectNotFound.for_id(subject_id)
        opened = [
            (
                r,
                readable(
                    self.cipher, r[2], (r[1], collection, subject_id), r[4], policy=self.seal_policy
                ),
            )
            for r in rows
            if r[1] is not None
        ]
        found = [(r, data) for r, data in opened if data is not None]
        matrix = embedding_matrix([data for _, data in found], dim)
        times = SubjectTimes(rows[0][5], rows[0][6], rows[0][7])
        return (
            [r[1] for r, _ in found],
            matrix.astype(np.float32),
            [r[3] for r, _ in found],
            times,
        )

    def pipeline_versions(self, *, collection: str, face_ids: Collection[str]) -> dict[str, str]:
        """The pipeline version each of these faces was stored with (by primary key;
        faces deleted meanwhile are missing)."""
        if not face_ids:
            return {}
        stmt = select(Face.id, Face.pipeline_version).where(
            Face.collection_id == collection, Face.id.in_(sorted(face_ids))
        )
        with self.engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(stmt).all()}

    def face_embedding(
        self, *, collection: str, face_id: str, encoders: Collection[str]
    ) -> tuple[str, np.ndarray]:
        """A stored face's subject and embedding, made by one of ``encoders``.

        Raises:
            FaceNotFound: no such face in the collection (or of another model).
        """
        stmt = select(Face.subject_id, Face.embedding, Face.key_id).where(
            Face.collection_id == collection,
            Face.id == face_id,
            Face.encoder.in_(sorted(encoders)),
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise FaceNotFound(f"No face {face_id!r} in this collection.", face_id=face_id)
        stored = readable(
            self.cipher, row[1], (face_id, collection, str(row[0])), row[2], policy=self.seal_policy
        )
        if stored is None:
            raise FaceNotFound(f"No face {face_id!r} in this collection.", face_id=face_id)
        return str(row[0]), np.frombuffer(stored, dtype=EMBEDDING_DTYPE).astype(np.float32)

    def subject_face_bytes(self, *, collection: str, subject_id: str) -> dict[str, bytes]:
        """Each face of the subject's embedding, as stored plain bytes (decrypted)."""
        stmt = select(Face.id, Face.embedding, Face.key_id).where(
            *_of_subject(collection, subject_id)
        )
        with self.engine.connect() as conn:
            opened = {
                r[0]: readable(
                    self.cipher, r[1], (r[0], collection, subject_id), r[2], policy=self.seal_policy
                )
                for r in conn.execute(stmt)
            }
        return {face: data for face, data in opened.items() if data is not None}

    def list_faces(self, *, collection: str, subject_id: str) -> list[FaceRecord]:
        with Session(self.engine) as session:
            rows = session.scalars(
                select(Face)
                .where(*_of_subject(collection, subject_id))
                .order_by(Face.created_at, Face.id)
            ).all()
            return [_face_record(row) for row in rows]

    def list_subjects(
        self, *, collection: str, offset: int, limit: int, prefix: str | None = None
    ) -> tuple[list[SubjectRecord], int]:
        """A page of a collection's subjects ordered by id, and the total count (matching
        ``prefix``)."""
        with Session(self.engine) as session:
            where = [Subject.collection_id == collection]
            if prefix:
                where.append(Subject.id.startswith(prefix, autoescape=True))
            total = session.scalar(select(func.count()).select_from(Subject).where(*where))
            counts = (
                select(Face.subject_id, func.count().label("n"))
                .where(Face.collection_id == collection)
                .group_by(Face.subject_id)
                .subquery()
            )
            rows = session.execute(
                select(Subject, func.coalesce(counts.c.n, 0))
                .outerjoin(counts, counts.c.subject_id == Subject.id)
                .where(*where)
                .order_by(Subject.id)
                .offset(offset)
                .limit(limit)
            ).all()
            return [_subject_record(row[0], int(row[1])) for row in rows], int(total or 0)

    def get_collection(self, *, collection: str) -> CollectionRecord:
        found = self.list_collections(only=collection)
        if not found:
            raise CollectionNotFound.for_id(collection)
        return found[0]

    def collection_exists(self, *, collection: str) -> bool:
        with Session(self.engine) as session:
            return session.get(CollectionRow, collection) is not None

    def collection_deleted(self, *, collection: str) -> bool:
        """Whether the collection was deleted and not created again since."""
        with Session(self.engine) as session:
            return session.get(DeletedCollection, collection) is not None

    def list_collections(self, *, only: str | None = None) -> list[CollectionRecord]:
        """Every collection (or just ``only``) with its subject and face counts, by id."""
        with Session(self.engine) as session:
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
            found: list[tuple[CollectionRow, int, int]] = [
                (r[0], int(r[1]), int(r[2])) for r in session.execute(stmt).all()
            ]
            return [
                CollectionRecord(
                    c.id,
                    c.created_at,
                    n,
                    m,
                    c.retention_days,
                    bool(c.consent_required),
                    c.identify_fpir,
                    c.verify_max_fmr,
                )
                for c, n, m in found
            ]

    def collection_policy(self, *, collection: str) -> CollectionPolicy:
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

    def subject_times(
        self, *, collection: str, subject_ids: Collection[str]
    ) -> dict[str, SubjectTimes]:
        """When each of these subjects was made, last used and expires (by key)."""
        if not subject_ids:
            return {}
        stmt = select(
            Subject.id, Subject.created_at, Subject.last_used_at, Subject.expires_at
        ).where(Subject.collection_id == collection, Subject.id.in_(sorted(subject_ids)))
        with self.engine.connect() as conn:
            return {r[0]: SubjectTimes(r[1], r[2], r[3]) for r in conn.execute(stmt).all()}

    def due_subjects(self, *, now: datetime, limit: int = 1000) -> list[tuple[str, str]]:
        """(collection, subject) pairs due for deletion at ``now``: past their expiry,
        or unused for longer than their collection's retention days."""
        due: list[tuple[str, str]] = []
        with self.engine.connect() as conn:
            expired = conn.execute(
                select(Subject.collection_id, Subject.id)
                .where(Subject.expires_at <= now)
                .limit(limit)
            ).all()
            due.extend((r[0], r[1]) for r in expired)
            schedules = conn.execute(
                select(CollectionRow.id, CollectionRow.retention_days).where(
                    CollectionRow.retention_days.is_not(None)
                )
            ).all()
            for collection, days in schedules:
                cutoff = now - timedelta(days=int(days or 0))
                unused = conn.execute(
                    select(Subject.id)
                    .where(
                        Subject.collection_id == collection,
                        func.coalesce(Subject.last_used_at, Subject.created_at) <= cutoff,
                    )
                    .limit(limit)
                ).all()
                due.extend((collection, r[0]) for r in unused)
        return sorted(set(due))[:limit]
