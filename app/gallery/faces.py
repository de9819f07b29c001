"""Faces: written through a transaction (:class:`FaceRows`: an enrollment's, an
import's in batches, by COPY on PostgreSQL and INSERT elsewhere, the twins side by
side), read by key or all at once (:class:`FaceReads`)."""

from __future__ import annotations

import gc
import threading
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.errors import FaceNotFound, SubjectNotFound
from app.gallery import pgcopy
from app.gallery.crypto import Sealing
from app.gallery.models import EMBEDDING_DTYPE, Face, Subject, embedding_matrix, keyed_in
from app.gallery.records import (
    Added,
    EmbeddingRows,
    FaceRecord,
    NewFace,
    SubjectTimes,
    face_record,
)
from app.gallery.sealing import note_key, resealed
from app.gallery.subjects import of_subject

if TYPE_CHECKING:
    from app.gallery.unit import Transaction

# Rows per slice when reading every embedding (FaceReads.load).
LOAD_SLICE = 50_000
# The columns of an imported face (a row of the faces table).
_COPY_COLUMNS = (
    "id, collection_id, subject_id, embedding, box_left, box_top, box_right, "
    "box_bottom, detector_score, encoder, pipeline_version, created_at"
).split(", ")


@dataclass(frozen=True)
class ImportBatch:
    """One slice of an import: the same rows for COPY and for INSERT."""

    face_ids: list[str]
    collection: str
    subject_ids: list[str]
    vectors: np.ndarray
    encoder: str
    pipeline_version: str
    created: datetime


@dataclass(frozen=True)
class StoredFace:
    """A face's row as stored: its embedding sealed or plain."""

    id: str
    collection: str
    subject_id: str
    embedding: bytes
    key_id: str | None

    @property
    def owner(self) -> tuple[str, str, str]:
        return (self.id, self.collection, self.subject_id)


def checked_vectors(faces: list[NewFace]) -> np.ndarray:
    """The faces' embeddings as one matrix; ValueError if one is not a vector of finite
    floats."""
    vectors = []
    for face in faces:
        vector = np.asarray(face.embedding, dtype=EMBEDDING_DTYPE)
        if vector.ndim != 1 or not len(vector) or not np.all(np.isfinite(vector)):
            raise ValueError("an embedding must be a vector of finite floats")
        vectors.append(vector)
    return np.stack(vectors) if vectors else np.zeros((0, 0), dtype=EMBEDDING_DTYPE)


class FaceRows:
    """A transaction's face rows; every face stored is sealed with the gallery's key
    and told to the vector mirror."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.session = tx.session

    def add(
        self,
        collection: str,
        subject_id: str,
        faces: list[NewFace],
        encoder: str,
        pipeline_version: str,
        ids: list[str] | None = None,
    ) -> list[FaceRecord]:
        """Store ``faces`` of an existing subject (ValueError for a bad embedding), with
        new random ids or ``ids``."""
        vectors = checked_vectors(faces)
        face_ids = ids or [str(uuid.uuid4()) for _ in faces]
        rows = [
            self._row(face_id, collection, subject_id, face, vector, encoder, pipeline_version)
            for face, vector, face_id in zip(faces, vectors, face_ids, strict=True)
        ]
        self._note_key()
        self.session.add_all(rows)
        self.session.flush()
        ids = [r.id for r in rows]
        for face_id in ids:
            self.tx.log.add("add_face", collection, subject_id, face_id)
        if rows:
            self.tx.stored(Added(collection, ids, [subject_id] * len(ids), encoder, vectors))
        return [face_record(r) for r in rows]

    def _row(
        self,
        face_id: str,
        collection: str,
        subject_id: str,
        face: NewFace,
        vector: np.ndarray,
        encoder: str,
        pipeline_version: str,
    ) -> Face:
        """A face's row, its embedding sealed with its face, collection and subject."""
        stored, kid = self.tx.sealing.seal(vector.tobytes(), (face_id, collection, subject_id))
        left, top, right, bottom = (int(v) for v in face.box.as_tuple())
        return Face(
            id=face_id,
            collection_id=collection,
            subject_id=subject_id,
            embedding=stored,
            key_id=kid,
            box_left=left,
            box_top=top,
            box_right=right,
            box_bottom=bottom,
            detector_score=float(face.detector_score),
            encoder=encoder,
            pipeline_version=pipeline_version,
        )

    def delete(self, collection: str, subject_id: str, face_id: str) -> None:
        """One face of a subject (SubjectNotFound, FaceNotFound); the subject stays."""
        if self.session.get(Subject, (collection, subject_id)) is None:
            raise SubjectNotFound.for_id(subject_id)
        where = (Face.id == face_id, *of_subject(collection, subject_id))
        if not self.session.execute(delete(Face).where(*where)).rowcount:  # type: ignore[attr-defined]
            raise FaceNotFound(
                f"Subject {subject_id!r} has no face {face_id!r}.",
                subject_id=subject_id,
                face_id=face_id,
            )
        self.tx.log.add("delete_face", collection, subject_id, face_id)

    def import_batch(self, batch: ImportBatch, total: int) -> None:
        """One slice of an import of ``total`` faces (COPY on PostgreSQL unless sealed)."""
        self._note_key()
        if self.tx.dialect == "postgresql" and self.tx.sealing.cipher is None:
            _copy_faces(self.tx, batch)
        else:
            _insert_faces(self.tx, batch)
        self.tx.stored(
            Added(
                batch.collection,
                batch.face_ids,
                batch.subject_ids,
                batch.encoder,
                batch.vectors,
                bulk=True,
                total=total,
            )
        )

    def stale(self, current: str | None, after: str, limit: int) -> list[StoredFace]:
        """Up to ``limit`` rows (by id, after ``after``) not sealed with key ``current``
        in the current form: an older key's, the older form, or plain (None: every
        sealed row)."""
        stale = (
            (
                Face.key_id.is_(None)
                | (Face.key_id != current)
                | (func.length(Face.embedding) % 4 == 0)  # the older form
            )
            if current
            else Face.key_id.is_not(None)
        )
        stmt = select(Face.id, Face.collection_id, Face.subject_id, Face.embedding, Face.key_id)
        stmt = stmt.where(stale, Face.id > after).order_by(Face.id).limit(limit)
        return [StoredFace(*r) for r in self.session.execute(stmt)]

    def rewrite(self, face_id: str, stored: bytes, kid: str | None) -> None:
        """A face's embedding in another stored form (a key rotation)."""
        self.session.execute(
            update(Face).where(Face.id == face_id).values(embedding=stored, key_id=kid)
        )

    def all_resealed(self) -> None:
        """Every row is now in the gallery's key and form (sealing.resealed)."""
        resealed(self.session, self.tx.sealing.cipher)

    def _note_key(self) -> None:
        if self.tx.sealing.cipher is not None:
            note_key(self.session, self.tx.sealing.cipher)


def _copy_faces(tx: Transaction, batch: ImportBatch) -> None:
    """Imported faces by COPY: the same rows the INSERT path writes, about twice as
    fast (app/gallery/pgcopy.py)."""
    fixed = "\t".join(
        pgcopy.text_field(v)
        for v in ("0", "0", "0", "0", "0", batch.encoder, batch.pipeline_version)
    )
    when = batch.created.isoformat()
    c = pgcopy.text_field(batch.collection)
    subjects = [pgcopy.text_field(s) for s in batch.subject_ids]
    pgcopy.copy_lines(
        tx.connection,
        "faces",
        _COPY_COLUMNS,
        (
            f"{f}\t{c}\t{s}\t{pgcopy.bytea_field(v.tobytes())}\t{fixed}\t{when}\n"
            for f, s, v in zip(batch.face_ids, subjects, batch.vectors, strict=True)
        ),
    )


def _insert_faces(tx: Transaction, batch: ImportBatch) -> None:
    """Imported faces by INSERT (sealed when the gallery has a key): :func:`_copy_faces`'
    twin, for SQLite (and any database without COPY)."""
    rows = []
    for face_id, subject_id, vector in zip(
        batch.face_ids, batch.subject_ids, batch.vectors, strict=True
    ):
        stored, kid = tx.sealing.seal(vector.tobytes(), (face_id, batch.collection, subject_id))
        rows.append(
            {
                "id": face_id,
                "collection_id": batch.collection,
                "subject_id": subject_id,
                "embedding": stored,
                "key_id": kid,
                "box_left": 0,
                "box_top": 0,
                "box_right": 0,
                "box_bottom": 0,
                "detector_score": 0.0,
                "encoder": batch.encoder,
                "pipeline_version": batch.pipeline_version,
                "created_at": batch.created,
            }
        )
    tx.connection.execute(insert(Face), rows)


class FaceReads:
    """Faces read by key, by subject, for an export, or all into one matrix."""

    def __init__(self, engine: Engine, sealing: Sealing) -> None:
        self.engine = engine
        self.sealing = sealing

    def of_subject(self, *, collection: str, subject_id: str) -> list[FaceRecord]:
        with Session(self.engine) as session:
            rows = session.scalars(
                select(Face)
                .where(*of_subject(collection, subject_id))
                .order_by(Face.created_at, Face.id)
            ).all()
            return [face_record(row) for row in rows]

    def pipeline_versions(self, *, collection: str, face_ids: Collection[str]) -> dict[str, str]:
        """The pipeline version each of these faces was stored with (by primary key;
        faces deleted meanwhile are missing)."""
        if not face_ids:
            return {}
        stmt = select(Face.id, Face.pipeline_version).where(
            keyed_in(Face.id, face_ids, Face.collection_id, collection)
        )
        with self.engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(stmt).all()}

    def embedding(
        self, *, collection: str, face_id: str, encoders: Collection[str]
    ) -> tuple[str, np.ndarray]:
        """A stored face's subject and embedding, made by one of ``encoders``
        (FaceNotFound: no such face in the collection, or of another model)."""
        stmt = select(Face.subject_id, Face.embedding, Face.key_id).where(
            Face.collection_id == collection,
            Face.id == face_id,
            Face.encoder.in_(sorted(encoders)),
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        stored = None
        if row is not None:
            stored = self.sealing.open(row[1], (face_id, collection, str(row[0])), row[2])
        if row is None or stored is None:
            raise FaceNotFound(f"No face {face_id!r} in this collection.", face_id=face_id)
        return str(row[0]), np.frombuffer(stored, dtype=EMBEDDING_DTYPE).astype(np.float32)

    def export_rows(
        self, *, collection: str
    ) -> list[tuple[FaceRecord, str | None, SubjectTimes, bytes]]:
        """Every face of a collection with its subject's name and times and its plain
        embedding bytes, by subject then face (a row that does not open is left out,
        logged)."""
        stmt = (
            select(Face, Subject.name, Subject.created_at, Subject.last_used_at, Subject.expires_at)
            .join(
                Subject,
                (Subject.collection_id == Face.collection_id) & (Subject.id == Face.subject_id),
            )
            .where(Face.collection_id == collection)
            .order_by(Face.subject_id, Face.created_at, Face.id)
        )
        out = []
        with Session(self.engine) as session:
            for face, name, created, used, expires in session.execute(stmt):
                owner = (face.id, face.collection_id, face.subject_id)
                data = self.sealing.open(face.embedding, owner, face.key_id)
                if data is not None:
                    out.append(
                        (face_record(face), name, SubjectTimes(created, used, expires), data)
                    )
        return out

    def load(
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
        where = self._where(face_ids, encoders, collection)
        rows = _Loaded()
        query = select(
            Face.id, Face.collection_id, Face.subject_id, Face.embedding, Face.key_id
        ).where(*where)
        with collector_paused(), self.engine.connect() as conn:
            count = select(func.count()).select_from(Face).where(*where)
            rows.matrix = np.empty((int(conn.execute(count).scalar_one()), dim), EMBEDDING_DTYPE)
            # The driver's own cursor, not SQLAlchemy's rows: its Row objects cost half
            # of a 1M-face load (8.0 s against 4.0 s; issue 41). The values bound into
            # the statement are ids and encoder names, quoted by the dialect.
            sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql)
                while part := cursor.fetchmany(LOAD_SLICE):
                    rows.add(self._opened(part), dim)
            finally:
                cursor.close()
        return rows.done()

    def _where(
        self, face_ids: list[str] | None, encoders: Collection[str], collection: str | None
    ) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if face_ids is not None and collection is not None:
            where.append(keyed_in(Face.id, face_ids, Face.collection_id, collection))
        elif face_ids is not None:
            where.append(Face.id.in_(face_ids))
        elif collection is not None and self.engine.dialect.name == "sqlite":
            # Every face of one collection: scan the table in storage order. Through the
            # (collection, subject) index SQLite visits rows in subject order, a random
            # read each: 1M imported faces took minutes, a full scan seconds. (The
            # expression hides the column from the index; PostgreSQL plans its own.)
            where.append((Face.collection_id + "") == collection)
        elif collection is not None:
            where.append(Face.collection_id == collection)
        if encoders:
            where.append(Face.encoder.in_(sorted(encoders)))
        return where

    def _opened(self, part: Sequence[Any]) -> Sequence[Any]:
        """A slice's rows with their embeddings opened; those that do not open left out
        (plain rows as they came: their key id is never read)."""
        if not self.sealing.policy.refuse_plain and not any(map(itemgetter(4), part)):
            return part
        opened = self.sealing.open_rows(part)
        return [
            (r[0], r[1], r[2], data)
            for r, data in zip(part, opened, strict=True)
            if data is not None
        ]


_COLLECTOR = threading.Lock()
_pauses: list[bool] = []  # one entry a pause under way: whether the collector ran before


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector held off while millions of rows are read (rows
    of ids and bytes hold no cycles). Its passes over every tuple and list read so far
    were half of a 1M-face load: 4.3 s against 2.3 s, 6.7 against 4.2 with decryption
    (issue 41). Process-wide, so loads at once share one pause: the collector runs again
    when the last ends, if it ran before the first."""
    with _COLLECTOR:
        _pauses.append(gc.isenabled() if not _pauses else _pauses[0])
        gc.disable()
    try:
        yield
    finally:
        with _COLLECTOR:
            was_on = _pauses.pop()
            if not _pauses and was_on:
                gc.enable()


def _columns(part: Sequence[Any]) -> tuple[tuple[Any, ...], ...]:
    """The first four columns of a slice's rows (a fifth, the key id, dropped)."""
    columns = tuple(zip(*part, strict=True))
    return columns[0], columns[1], columns[2], columns[3]


class _Loaded:
    """The rows read so far into one matrix (grown when faces were added since the
    count)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.collections: list[str] = []
        self.subjects: list[str] = []
        self.matrix = np.empty((0, 0), dtype=EMBEDDING_DTYPE)

    def add(self, part: Sequence[Any], dim: int) -> None:
        """A slice of (id, collection, subject, embedding[, key id]) rows."""
        if not part:
            return
        start = len(self.ids)
        ids, collections, subjects, blobs = _columns(part)
        self.ids.extend(ids)
        self.collections.extend(collections)
        self.subjects.extend(subjects)
        block = embedding_matrix(list(blobs), dim)
        if start + len(block) > len(self.matrix):
            self.matrix = np.concatenate([self.matrix[:start], np.empty_like(block)])
        self.matrix[start : start + len(block)] = block

    def done(self) -> EmbeddingRows:
        return EmbeddingRows(
            face_ids=self.ids,
            collections=self.collections,
            subject_ids=self.subjects,
            matrix=self.matrix[: len(self.ids)],
        )
