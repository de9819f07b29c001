"""The gallery's durable store: collections, their subjects and face embeddings in SQL.

SQLite (WAL) by default; any SQLAlchemy URL works (PostgreSQL for several replicas).
Every write is one transaction that also bumps the gallery version and logs which ids it
touched, so in-memory indexes in other threads or processes can catch up (see
:meth:`GalleryStore.changes_since`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np
from sqlalchemy import create_engine, delete, event, func, insert, inspect, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.errors import (
    CollectionExists,
    CollectionNotFound,
    DatabaseBusy,
    FaceNotFound,
    SubjectExists,
    SubjectNotFound,
)
from app.gallery import pgcopy, pgvector
from app.gallery.models import (
    EMBEDDING_DTYPE,
    ApiKey,
    DeletedCollection,
    Face,
    GalleryEvent,
    GalleryState,
    IdempotencyRecord,
    IndexSnapshotRecord,
    RevokedEnvKey,
    Subject,
    embedding_matrix,
)
from app.gallery.models import Collection as CollectionRow
from app.gallery.pgvector import BULK_REBUILD
from app.geometry import Box

# How many versions of change log to keep. A process further behind than this reloads
# the whole gallery instead of replaying; pruning keeps deleted subjects' ids from
# lingering in the log.
EVENT_RETENTION = 10_000
# How long a SQLite writer waits for another's write lock before DatabaseBusy (503).
BUSY_TIMEOUT_SECONDS = 30.0
# Index snapshot records kept (each process may still hold an older one mapped).
SNAPSHOT_RECORDS = 16
# Rows per slice when reading every embedding (load_embeddings).
LOAD_SLICE = 50_000


@dataclass(frozen=True)
class NewFace:
    embedding: np.ndarray
    box: Box
    detector_score: float


@dataclass(frozen=True)
class IdempotencyClaim:
    """An Idempotency-Key to record with an enrollment, in the same transaction."""

    owner: str
    key: str
    request_sha256: str


@dataclass(frozen=True)
class IdempotentEnrollment:
    request_sha256: str
    collection: str
    subject_id: str
    face_ids: list[str]


class IdempotencyKeyTaken(Exception):
    """Another request recorded this Idempotency-Key first (nothing of ours was stored)."""


# How long an Idempotency-Key is remembered (payment APIs keep theirs for 24 hours).
IDEMPOTENCY_RETENTION = timedelta(hours=24)


@dataclass(frozen=True)
class FaceRecord:
    id: str
    subject_id: str
    box: Box
    detector_score: float
    encoder: str
    pipeline_version: str
    created_at: datetime


@dataclass(frozen=True)
class SubjectRecord:
    id: str
    name: str | None
    metadata: dict[str, Any] | None
    created_at: datetime
    face_count: int


@dataclass(frozen=True)
class CollectionRecord:
    id: str
    created_at: datetime
    subjects: int
    faces: int


# reload_collection: many faces changed at once (an import); reload that collection.
ChangeKind = Literal[
    "add_face",
    "delete_face",
    "delete_subject",
    "create_collection",
    "delete_collection",
    "reload_collection",
]


@dataclass(frozen=True)
class Change:
    version: int
    kind: ChangeKind
    collection: str
    # Empty for delete_collection.
    subject_id: str
    # The face added or deleted; None for delete_subject and delete_collection.
    face_id: str | None


@dataclass(frozen=True)
class EmbeddingRows:
    face_ids: list[str]
    collections: list[str]
    subject_ids: list[str]
    matrix: np.ndarray  # (N, dim) float32


class GalleryStore:
    """Collections, their subjects and faces in a SQL database. Subject ids are unique
    within a collection; every subject method names its collection. Methods take keyword
    arguments only and return plain records, never ORM objects."""

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

    def enable_vectors(self, *, dim: int, build_memory_mb: int | None = None) -> bool:
        """Keep and search embeddings in PostgreSQL with pgvector, if it is available
        (app/gallery/pgvector.py). True when enabled."""
        if build_memory_mb is not None:
            self.build_memory_mb = build_memory_mb
        if pgvector.enable(self.engine, dim=dim, build_memory_mb=self.build_memory_mb):
            self.vector_dim = dim
        return self.vector_dim is not None

    def _store_vectors(self, session: Session, faces: list[Face], vectors: np.ndarray) -> None:
        """The faces' embeddings into face_vectors too, in the same transaction."""
        if self.vector_dim is None or vectors.shape[1] != self.vector_dim:
            return
        pgvector.insert_vectors(
            session.connection(),
            [(f.id, f.collection_id, f.subject_id, f.encoder) for f in faces],
            vectors,
        )

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

    # ---- reads -----------------------------------------------------------------------
    def ping(self) -> None:
        """Raise if the database cannot answer a query."""
        with self.engine.connect() as conn:
            conn.execute(select(1))

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
    ) -> tuple[list[str], np.ndarray, list[str]]:
        """One subject's face ids, ``(n, dim)`` embeddings made by ``encoders`` and
        pipeline versions, read by key in one indexed query: what verify needs, at a cost
        that does not depend on the gallery's size. n may be 0 (every face deleted, or of
        another model).

        Raises:
            SubjectNotFound: no such subject in the collection.
        """
        stmt = (
            select(Subject.id, Face.id, Face.embedding, Face.pipeline_version)
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
        found = [r for r in rows if r[1] is not None]
        matrix = embedding_matrix([r[2] for r in found], dim)
        return [r[1] for r in found], matrix.astype(np.float32), [r[3] for r in found]

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
        stmt = select(Face.subject_id, Face.embedding).where(
            Face.collection_id == collection,
            Face.id == face_id,
            Face.encoder.in_(sorted(encoders)),
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            raise FaceNotFound(f"No face {face_id!r} in this collection.", face_id=face_id)
        return str(row[0]), np.frombuffer(row[1], dtype=EMBEDDING_DTYPE).astype(np.float32)

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

    def load_embeddings(
        self,
        *,
        dim: int,
        face_ids: list[str] | None = None,
        encoders: Collection[str] = (),
        collection: str | None = None,
    ) -> EmbeddingRows:
        """Embeddings of all faces, of one collection, or of the given ids (those that
        still exist), made by one of ``encoders`` (all encoders when empty; then they
        must share ``dim``). One query read in slices of LOAD_SLICE rows into one
        matrix: no per-face Python objects beyond the ids.

        Slices, not one fetchall: fetching millions of rows in one C call held the GIL
        for tens of seconds, so the process answered nothing meanwhile (verify, and
        the process manager's health ping: uvicorn killed workers loading 10M faces)."""
        where: list[ColumnElement[bool]] = []
        if face_ids is not None:
            where.append(Face.id.in_(face_ids))
        if collection is not None and face_ids is None and self.engine.dialect.name == "sqlite":
            # Every face of one collection: scan the table in storage order. Through the
            # (collection, subject) index SQLite visits rows in subject order, a random
            # read each: 1M imported faces took minutes, a full scan seconds. (The
            # expression hides the column from the index; PostgreSQL plans its own.)
            where.append((Face.collection_id + "") == collection)
        elif collection is not None:
            where.append(Face.collection_id == collection)
        if encoders:
            where.append(Face.encoder.in_(sorted(encoders)))
        ids: list[str] = []
        collections: list[str] = []
        subjects: list[str] = []
        with self.engine.connect() as conn:
            expected = int(
                conn.execute(select(func.count()).select_from(Face).where(*where)).scalar_one()
            )
            matrix = np.empty((expected, dim), dtype=EMBEDDING_DTYPE)
            result = conn.execute(
                select(Face.id, Face.collection_id, Face.subject_id, Face.embedding).where(*where)
            )
            while part := result.fetchmany(LOAD_SLICE):
                start = len(ids)
                part_ids, part_collections, part_subjects, blobs = zip(*part, strict=True)
                ids.extend(part_ids)
                collections.extend(part_collections)
                subjects.extend(part_subjects)
                block = embedding_matrix(list(blobs), dim)
                if start + len(block) > len(matrix):  # faces added since the count
                    matrix = np.concatenate([matrix[:start], np.empty_like(block)])
                matrix[start : start + len(block)] = block
        return EmbeddingRows(
            face_ids=ids,
            collections=collections,
            subject_ids=subjects,
            matrix=matrix[: len(ids)],
        )

    def register_snapshot(self, *, token: str, version: int, digest: str) -> None:
        """Record an index snapshot saved from this database (app/gallery/snapshot.py);
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

    # ---- collections -------------------------------------------------------------------
    def create_collection(self, *, collection: str) -> CollectionRecord:
        """Create an empty collection; CollectionExists if the id is taken."""
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, self.busy_timeout)  # queue with the other writers
            if session.get(CollectionRow, collection) is not None:
                raise CollectionExists(
                    f"Collection {collection!r} already exists.", collection=collection
                )
            row = CollectionRow(id=collection, created_at=datetime.now(UTC))
            session.add(row)
            session.execute(delete(DeletedCollection).where(DeletedCollection.id == collection))
            session.flush()
            # Every version has its change: a gap in the log makes every process reload
            # every index (issue 25: 47 s on a 1.8M-face server after POST /collections).
            _log(session, version, [("create_collection", collection, "", None)])
            return CollectionRecord(row.id, row.created_at, 0, 0)

    def ensure_collection(self, *, collection: str) -> bool:
        """Create the collection unless it exists; whether this call created it (another
        process creating it at the same moment is not an error)."""
        if self.collection_exists(collection=collection):
            return False
        try:
            self.create_collection(collection=collection)
        except CollectionExists:
            return False
        return True

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
            return [CollectionRecord(c.id, c.created_at, n, m) for c, n, m in found]

    def delete_collection(
        self, *, collection: str, env_key_hashes: Collection[str] = ()
    ) -> tuple[CollectionRecord, int]:
        """Delete a collection with every subject and face of it, and revoke the API keys
        bound to it (so a new collection of the same name never inherits them), in one
        transaction: the database's keys, and ``env_key_hashes`` (the sha256 of the
        FACEVERIFY_API_KEYS keys bound to it, kept as revoked). The collection is
        recorded as deleted, so nothing but an admin's create brings it back. Returns
        what was deleted and the gallery version written."""
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, self.busy_timeout)
            row = session.get(CollectionRow, collection)
            if row is None:
                raise CollectionNotFound.for_id(collection)
            n_faces = session.execute(delete(Face).where(Face.collection_id == collection)).rowcount  # type: ignore[attr-defined]
            n_subjects = session.execute(
                delete(Subject).where(Subject.collection_id == collection)
            ).rowcount  # type: ignore[attr-defined]
            session.execute(
                delete(IdempotencyRecord).where(IdempotencyRecord.collection_id == collection)
            )
            session.execute(
                update(ApiKey)
                .where(ApiKey.collection_id == collection, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            now = datetime.now(UTC)
            known = set(
                session.scalars(
                    select(RevokedEnvKey.key_sha256).where(
                        RevokedEnvKey.key_sha256.in_(list(env_key_hashes))
                    )
                ).all()
            )
            for hashed in sorted(set(env_key_hashes) - known):
                session.add(
                    RevokedEnvKey(key_sha256=hashed, collection_id=collection, revoked_at=now)
                )
            session.execute(delete(DeletedCollection).where(DeletedCollection.id == collection))
            session.add(DeletedCollection(id=collection, deleted_at=now))
            record = CollectionRecord(row.id, row.created_at, int(n_subjects), int(n_faces))
            session.delete(row)
            _log(session, version, [("delete_collection", collection, "", None)])
            return record, version

    # ---- writes ----------------------------------------------------------------------
    def import_faces(
        self,
        *,
        collection: str,
        subject_ids: list[str],
        embeddings: np.ndarray,
        names: list[str | None] | None = None,
        encoder: str,
        pipeline_version: str,
        batch: int = 20_000,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, int, int]:
        """Store many faces in one transaction (all or none): subjects that do not exist
        in the collection are created (with ``names``), existing ones get the faces
        added. The change log gets one ``reload_collection`` entry, not one per face.

        Returns:
            Faces stored, subjects created, and the gallery version written.
        """
        vectors = np.ascontiguousarray(embeddings, dtype=EMBEDDING_DTYPE)
        if vectors.ndim != 2 or len(vectors) != len(subject_ids):
            raise ValueError("one embedding row per subject id")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("embeddings must be finite")
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, lock_timeout=None)  # others' writes are short
            if session.get(CollectionRow, collection) is None:
                raise CollectionNotFound.for_id(collection)
            wanted = set(subject_ids)
            existing = (
                set(
                    session.scalars(
                        select(Subject.id).where(Subject.collection_id == collection)
                    ).all()
                )
                & wanted
            )
            first_name: dict[str, str | None] = {}
            for i, subject in enumerate(subject_ids):
                if subject not in first_name or first_name[subject] is None:
                    first_name[subject] = names[i] if names else None
            new_subjects = [
                {"collection_id": collection, "id": s, "name": first_name[s], "created_at": now}
                for s in sorted(wanted - existing)
            ]
            for start in range(0, len(new_subjects), batch):
                session.execute(insert(Subject), new_subjects[start : start + batch])
            rebuild = self.vector_dim is not None and len(subject_ids) >= BULK_REBUILD
            if rebuild:
                pgvector.bulk_begin(session.connection())
            with_vectors = self.vector_dim is not None and vectors.shape[1] == self.vector_dim
            face_ids = [str(uuid.uuid4()) for _ in subject_ids]
            copy = session.connection().dialect.name == "postgresql"
            for start in range(0, len(subject_ids), batch):
                end = min(start + batch, len(subject_ids))
                if copy:
                    _copy_faces(
                        session.connection(),
                        face_ids[start:end],
                        collection,
                        subject_ids[start:end],
                        vectors[start:end],
                        encoder=encoder,
                        pipeline_version=pipeline_version,
                        created=now,
                        with_vectors=with_vectors,
                    )
                else:
                    session.execute(
                        insert(Face),
                        [
                            {
                                "id": face_ids[i],
                                "collection_id": collection,
                                "subject_id": subject_ids[i],
                                "embedding": vectors[i].tobytes(),
                                "box_left": 0,
                                "box_top": 0,
                                "box_right": 0,
                                "box_bottom": 0,
                                "detector_score": 0.0,
                                "encoder": encoder,
                                "pipeline_version": pipeline_version,
                                "created_at": now,
                            }
                            for i in range(start, end)
                        ],
                    )
                    if with_vectors:
                        pgvector.insert_vectors(
                            session.connection(),
                            [
                                (face_ids[i], collection, subject_ids[i], encoder)
                                for i in range(start, end)
                            ],
                            vectors[start:end],
                        )
                if progress:
                    progress(end - start)
            if rebuild:
                pgvector.bulk_end(session.connection(), self.build_memory_mb)
            _log(session, version, [("reload_collection", collection, "", None)])
            return len(subject_ids), len(new_subjects), version

    def export_faces(
        self, *, collection: str
    ) -> tuple[list[FaceRecord], list[str | None], list[bytes]]:
        """Every face of a collection with its subject's name and its embedding bytes,
        by subject then face."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(Face, Subject.name)
                .join(
                    Subject,
                    (Subject.collection_id == Face.collection_id) & (Subject.id == Face.subject_id),
                )
                .where(Face.collection_id == collection)
                .order_by(Face.subject_id, Face.created_at, Face.id)
            ).all()
            return (
                [_face_record(r[0]) for r in rows],
                [r[1] for r in rows],
                [r[0].embedding for r in rows],
            )

    def add_faces(
        self,
        *,
        collection: str,
        subject_id: str,
        faces: list[NewFace],
        encoder: str,
        pipeline_version: str,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        add: bool = False,
        idempotency: IdempotencyClaim | None = None,
    ) -> tuple[list[FaceRecord], SubjectRecord, int]:
        """Create the subject (``add=False``: it must be new) or add to it (``add=True``:
        it must exist; name/metadata are updated when given), and store all ``faces`` in
        one transaction: all are stored or none. Checked inside the transaction, so two
        requests racing to create one subject cannot both succeed.

        Raises:
            CollectionNotFound: the collection does not exist.
            SubjectExists: ``add=False`` and the subject exists.
            SubjectNotFound: ``add=True`` and it does not.
            IdempotencyKeyTaken: ``idempotency`` was recorded by another request first.

        Returns:
            The stored faces, the subject afterwards, and the gallery version written.
        """
        with Session(self.engine) as session, session.begin():
            # Writers queue on the version row, so what the checks below read cannot
            # change before this transaction commits.
            version = _bump_version(session, self.busy_timeout)
            if idempotency is not None and self.find_idempotent(
                owner=idempotency.owner, key=idempotency.key, session=session
            ):
                raise IdempotencyKeyTaken(idempotency.key)
            if session.get(CollectionRow, collection) is None:
                raise CollectionNotFound.for_id(collection)
            subject = session.get(Subject, (collection, subject_id))
            if subject is None and add:
                raise SubjectNotFound.for_id(subject_id)
            if subject is not None and not add:
                raise SubjectExists(
                    f"Subject {subject_id!r} already exists; send add=true to add faces to it.",
                    subject_id=subject_id,
                )
            if subject is None:
                subject = Subject(collection_id=collection, id=subject_id, name=name, meta=metadata)
                session.add(subject)
            else:
                if name is not None:
                    subject.name = name
                if metadata is not None:
                    subject.meta = metadata
            rows, vectors = [], []
            for face in faces:
                vector = np.asarray(face.embedding, dtype=EMBEDDING_DTYPE)
                vectors.append(vector)
                if vector.ndim != 1 or not len(vector) or not np.all(np.isfinite(vector)):
                    raise ValueError("an embedding must be a vector of finite floats")
                left, top, right, bottom = (int(v) for v in face.box.as_tuple())
                rows.append(
                    Face(
                        id=str(uuid.uuid4()),
                        collection_id=collection,
                        subject_id=subject_id,
                        embedding=vector.tobytes(),
                        box_left=left,
                        box_top=top,
                        box_right=right,
                        box_bottom=bottom,
                        detector_score=float(face.detector_score),
                        encoder=encoder,
                        pipeline_version=pipeline_version,
                    )
                )
            session.add_all(rows)
            session.flush()
            if rows:
                self._store_vectors(session, rows, np.stack(vectors))
            _log(
                session,
                version,
                [("add_face", collection, subject_id, row.id) for row in rows],
            )
            if idempotency is not None:
                _record_idempotency(
                    session, idempotency, collection, subject_id, [r.id for r in rows]
                )
            count = session.scalar(
                select(func.count()).select_from(Face).where(*_of_subject(collection, subject_id))
            )
            return (
                [_face_record(r) for r in rows],
                _subject_record(subject, int(count or 0)),
                version,
            )

    def find_idempotent(
        self, *, owner: str, key: str, session: Session | None = None
    ) -> IdempotentEnrollment | None:
        """The enrollment recorded under this key, if within the retention period."""
        if session is None:
            with Session(self.engine) as own:
                return self.find_idempotent(owner=owner, key=key, session=own)
        row = session.get(IdempotencyRecord, (owner, key))
        if row is None or _aware(row.created_at) < datetime.now(UTC) - IDEMPOTENCY_RETENTION:
            return None
        return IdempotentEnrollment(
            row.request_sha256, row.collection_id, row.subject_id, list(row.face_ids)
        )

    def delete_subject(self, *, collection: str, subject_id: str) -> tuple[list[str], int]:
        """Delete a subject and every face of it. Returns the deleted face ids and the
        gallery version written."""
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, self.busy_timeout)
            if session.get(Subject, (collection, subject_id)) is None:
                raise SubjectNotFound.for_id(subject_id)
            face_ids = list(
                session.scalars(select(Face.id).where(*_of_subject(collection, subject_id))).all()
            )
            session.execute(delete(Face).where(*_of_subject(collection, subject_id)))
            session.execute(
                delete(Subject).where(Subject.collection_id == collection, Subject.id == subject_id)
            )
            _log(session, version, [("delete_subject", collection, subject_id, None)])
            return face_ids, version

    def delete_face(self, *, collection: str, subject_id: str, face_id: str) -> int:
        """Delete one face of a subject; the subject stays, even with no faces left.
        Returns the gallery version written."""
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, self.busy_timeout)
            if session.get(Subject, (collection, subject_id)) is None:
                raise SubjectNotFound.for_id(subject_id)
            deleted = session.execute(
                delete(Face).where(Face.id == face_id, *_of_subject(collection, subject_id))
            ).rowcount  # type: ignore[attr-defined]
            if not deleted:
                raise FaceNotFound(
                    f"Subject {subject_id!r} has no face {face_id!r}.",
                    subject_id=subject_id,
                    face_id=face_id,
                )
            _log(session, version, [("delete_face", collection, subject_id, face_id)])
            return version


def _copy_faces(
    conn: Connection,
    face_ids: list[str],
    collection: str,
    subject_ids: list[str],
    vectors: np.ndarray,
    *,
    encoder: str,
    pipeline_version: str,
    created: datetime,
    with_vectors: bool,
) -> None:
    """Imported faces (and their pgvector rows) by COPY: the same rows the INSERT path
    writes, about twice as fast (app/gallery/pgcopy.py)."""
    fixed = "\t".join(
        pgcopy.text_field(v) for v in ("0", "0", "0", "0", "0", encoder, pipeline_version)
    )
    when = created.isoformat()
    c = pgcopy.text_field(collection)
    subjects = [pgcopy.text_field(s) for s in subject_ids]
    pgcopy.copy_lines(
        conn,
        "faces",
        (
            "id, collection_id, subject_id, embedding, box_left, box_top, box_right, "
            "box_bottom, detector_score, encoder, pipeline_version, created_at"
        ).split(", "),
        (
            f"{f}\t{c}\t{s}\t{pgcopy.bytea_field(v.tobytes())}\t{fixed}\t{when}\n"
            for f, s, v in zip(face_ids, subjects, vectors, strict=True)
        ),
    )
    if with_vectors:
        e = pgcopy.text_field(encoder)
        pgcopy.copy_lines(
            conn,
            "face_vectors",
            ("face_id", "collection_id", "subject_id", "encoder", "embedding"),
            (
                f"{f}\t{c}\t{s}\t{e}\t{v}\n"
                for f, s, v in zip(face_ids, subjects, pgcopy.vector_fields(vectors), strict=True)
            ),
        )


def _of_subject(collection: str, subject_id: str) -> tuple[Any, Any]:
    """WHERE clauses for one subject's faces."""
    return Face.collection_id == collection, Face.subject_id == subject_id


def _bump_version(session: Session, lock_timeout: float | None = BUSY_TIMEOUT_SECONDS) -> int:
    # First statement of every write transaction: it takes the write lock (SQLite) or the
    # row lock (PostgreSQL) at once, so writers queue here and versions are handed out in
    # commit order; a reader that has seen version v has seen every write <= v. On
    # PostgreSQL a writer waits for the row at most ``lock_timeout`` s (then
    # DatabaseBusy, as SQLite's busy timeout gives); None: as long as it takes.
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


def _log(session: Session, version: int, changes: list[tuple[str, str, str, str | None]]) -> None:
    session.execute(
        insert(GalleryEvent),
        [
            {
                "version": version,
                "kind": kind,
                "collection_id": collection,
                "subject_id": subject_id,
                "face_id": face_id,
            }
            for kind, collection, subject_id, face_id in changes
        ],
    )
    session.execute(delete(GalleryEvent).where(GalleryEvent.version <= version - EVENT_RETENTION))


def _record_idempotency(
    session: Session,
    claim: IdempotencyClaim,
    collection: str,
    subject_id: str,
    face_ids: list[str],
) -> None:
    now = datetime.now(UTC)
    # Forget expired keys (this one included, so it may be used afresh).
    session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.created_at < now - IDEMPOTENCY_RETENTION)
    )
    # A plain INSERT: a second request with the same key fails on the primary key, and its
    # whole transaction (its faces) rolls back.
    session.add(
        IdempotencyRecord(
            owner=claim.owner,
            key=claim.key,
            request_sha256=claim.request_sha256,
            collection_id=collection,
            subject_id=subject_id,
            face_ids=face_ids,
            created_at=now,
        )
    )
    session.flush()


def _change_kind(kind: str) -> ChangeKind:
    if kind not in get_args(ChangeKind):
        raise ValueError(f"unknown change kind {kind!r} in the gallery log")
    return cast(ChangeKind, kind)


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes (stored as UTC).
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _subject_record(subject: Subject, face_count: int) -> SubjectRecord:
    return SubjectRecord(
        id=subject.id,
        name=subject.name,
        metadata=subject.meta,
        created_at=subject.created_at,
        face_count=face_count,
    )


def _face_record(face: Face) -> FaceRecord:
    return FaceRecord(
        id=face.id,
        subject_id=face.subject_id,
        box=Box(face.box_left, face.box_top, face.box_right, face.box_bottom),
        detector_score=face.detector_score,
        encoder=face.encoder,
        pipeline_version=face.pipeline_version,
        created_at=face.created_at,
    )


_VERSION_SQL = f"SELECT {GalleryState.version.key} FROM {GalleryState.__tablename__}"  # noqa: S608


def _make_engine(url: str, *, echo: bool, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> Engine:
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
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
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


def migrate(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to the newest Alembic revision (or ``revision``: the migration
    tests build databases of earlier schemas); returns it. Several worker
    processes may start on a fresh database at once: the loser of a race retries and
    then finds the schema already current."""
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
