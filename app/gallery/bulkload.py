"""Faces in bulk: import (COPY on PostgreSQL, INSERT elsewhere: the twins side by side),
export, and reading every embedding into one matrix."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.errors import (
    CollectionNotFound,
    ConsentRequired,
    InvalidRequest,
    SubjectExpired,
)
from app.gallery import pgcopy, pgvector
from app.gallery.audit import AuditDraft, stage
from app.gallery.changelog import _bump_version, _log
from app.gallery.crypto import EmbeddingCipher, SealPolicy, readable
from app.gallery.engine import StoreBase
from app.gallery.models import (
    EMBEDDING_DTYPE,
    Face,
    Subject,
    embedding_matrix,
)
from app.gallery.models import Collection as CollectionRow
from app.gallery.pgvector import BULK_REBUILD
from app.gallery.records import (
    Consent,
    EmbeddingRows,
    FaceRecord,
    SubjectTimes,
    _face_record,
    checked_consent,
    due_at,
)
from app.gallery.sealing import note_key, resealed

# Rows per slice when reading every embedding (load_embeddings).
LOAD_SLICE = 50_000


@dataclass(frozen=True)
class _Batch:
    """One slice of an import: the same rows for COPY and for INSERT."""

    face_ids: list[str]
    collection: str
    subject_ids: list[str]
    vectors: np.ndarray
    encoder: str
    pipeline_version: str
    created: datetime
    with_vectors: bool
    cipher: EmbeddingCipher | None = None


def _copy_faces(conn: Connection, batch: _Batch) -> None:
    """Imported faces (and their pgvector rows) by COPY: the same rows the INSERT path
    writes, about twice as fast (app/gallery/pgcopy.py)."""
    fixed = "\t".join(
        pgcopy.text_field(v)
        for v in ("0", "0", "0", "0", "0", batch.encoder, batch.pipeline_version)
    )
    when = batch.created.isoformat()
    c = pgcopy.text_field(batch.collection)
    subjects = [pgcopy.text_field(s) for s in batch.subject_ids]
    pgcopy.copy_lines(
        conn,
        "faces",
        (
            "id, collection_id, subject_id, embedding, box_left, box_top, box_right, "
            "box_bottom, detector_score, encoder, pipeline_version, created_at"
        ).split(", "),
        (
            f"{f}\t{c}\t{s}\t{pgcopy.bytea_field(v.tobytes())}\t{fixed}\t{when}\n"
            for f, s, v in zip(batch.face_ids, subjects, batch.vectors, strict=True)
        ),
    )
    if batch.with_vectors:
        e = pgcopy.text_field(batch.encoder)
        pgcopy.copy_lines(
            conn,
            "face_vectors",
            ("face_id", "collection_id", "subject_id", "encoder", "embedding"),
            (
                f"{f}\t{c}\t{s}\t{e}\t{v}\n"
                for f, s, v in zip(
                    batch.face_ids, subjects, pgcopy.vector_fields(batch.vectors), strict=True
                )
            ),
        )


def _insert_faces(conn: Connection, batch: _Batch) -> None:
    """Imported faces (and their pgvector rows) by INSERT: :func:`_copy_faces`' twin,
    for SQLite (and any database without COPY)."""
    sealed: list[tuple[bytes, str | None]] = [
        batch.cipher.seal(v.tobytes(), (f, batch.collection, s))
        if batch.cipher
        else (v.tobytes(), None)
        for f, s, v in zip(batch.face_ids, batch.subject_ids, batch.vectors, strict=True)
    ]
    conn.execute(
        insert(Face),
        [
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
            for face_id, subject_id, (stored, kid) in zip(
                batch.face_ids, batch.subject_ids, sealed, strict=True
            )
        ],
    )
    if batch.with_vectors:
        pgvector.insert_vectors(
            conn,
            [
                (f, batch.collection, s, batch.encoder)
                for f, s in zip(batch.face_ids, batch.subject_ids, strict=True)
            ],
            batch.vectors,
        )


def _checked_matrix(embeddings: np.ndarray, rows: int) -> np.ndarray:
    vectors = np.ascontiguousarray(embeddings, dtype=EMBEDDING_DTYPE)
    if vectors.ndim != 2 or len(vectors) != rows:
        raise ValueError("one embedding row per subject id")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("embeddings must be finite")
    return vectors


def _create_subjects(
    session: Session,
    row: CollectionRow,
    subject_ids: list[str],
    names: list[str | None] | None,
    now: datetime,
    batch: int,
    consent: Consent | None,
) -> int:
    """The subjects of ``subject_ids`` the collection lacks, each with the first name
    given for it (and ``consent``); how many were created. Refused, before anything is
    written, where /enroll refuses (issue 37): new subjects in a collection that
    requires consent, without it (ConsentRequired), and faces for a subject past its
    retention or expiry (SubjectExpired)."""
    collection = row.id
    wanted = set(subject_ids)
    existing: set[str] = set()
    stmt = select(Subject.id, Subject.created_at, Subject.last_used_at, Subject.expires_at).where(
        Subject.collection_id == collection
    )
    expired = []
    for subject_id, created, used, expires in session.execute(stmt):
        if subject_id in wanted:
            existing.add(subject_id)
            due = due_at(SubjectTimes(created, used, expires), row.retention_days)
            if due is not None and now >= due:
                expired.append((subject_id, due))
    if expired:
        first, due = min(expired)
        raise SubjectExpired(
            f"{len(expired)} subjects of the file are past their retention in {collection!r} "
            f"(first {first!r}, due {due.isoformat()}): they no longer match, so no faces "
            "are added to them. Run `faceverify purge` first (then they are created anew), "
            "or leave them out of the file; nothing was stored.",
            subject_id=first,
            due_at=due.isoformat(),
        )
    if row.consent_required and consent is None and wanted - existing:
        raise ConsentRequired.for_collection(collection)
    if consent is not None:
        try:
            checked_consent(consent, now)
        except ValueError as exc:
            raise InvalidRequest(f"{exc}.") from exc
    first_name: dict[str, str | None] = {}
    for i, subject in enumerate(subject_ids):
        if subject not in first_name or first_name[subject] is None:
            first_name[subject] = names[i] if names else None
    agreed = consent.as_json() if consent is not None else None
    new_subjects = [
        {
            "collection_id": collection,
            "id": s,
            "name": first_name[s],
            "created_at": now,
            "last_used_at": now,
            "consent": agreed,
        }
        for s in sorted(wanted - existing)
    ]
    for start in range(0, len(new_subjects), batch):
        session.execute(insert(Subject), new_subjects[start : start + batch])
    return len(new_subjects)


class BulkFaces(StoreBase):
    """Import, export and the full read of embeddings."""

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
        audit: AuditDraft | None = None,
        consent: Consent | None = None,
    ) -> tuple[int, int, int]:
        """Store many faces in one transaction (all or none): subjects that do not exist
        in the collection are created (with ``names``), existing ones get the faces
        added. The change log gets one ``reload_collection`` entry, not one per face.

        Returns:
            Faces stored, subjects created, and the gallery version written.
        """
        vectors = _checked_matrix(embeddings, len(subject_ids))
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, lock_timeout=None)  # others' writes are short
            row = session.get(CollectionRow, collection)
            if row is None:
                raise CollectionNotFound.for_id(collection)
            created = _create_subjects(session, row, subject_ids, names, now, batch, consent)
            conn = session.connection()
            rebuild = self.vector_dim is not None and len(subject_ids) >= BULK_REBUILD
            if rebuild:
                pgvector.bulk_begin(conn)
            if self.cipher is not None:
                note_key(session, self.cipher)
            copy = conn.dialect.name == "postgresql" and self.cipher is None
            write = _copy_faces if copy else _insert_faces
            face_ids = [str(uuid.uuid4()) for _ in subject_ids]
            for start in range(0, len(subject_ids), batch):
                end = min(start + batch, len(subject_ids))
                part = _Batch(
                    face_ids[start:end],
                    collection,
                    subject_ids[start:end],
                    vectors[start:end],
                    encoder,
                    pipeline_version,
                    now,
                    with_vectors=self.vector_dim == vectors.shape[1],
                    cipher=self.cipher,
                )
                write(conn, part)
                if progress:
                    progress(end - start)
            if rebuild:
                pgvector.bulk_end(conn, self.build_memory_mb)
            _log(session, version, [("reload_collection", collection, "", None)])
            stage(
                session,
                collection=collection,
                subjects=[],
                detail={"faces": len(subject_ids), "subjects_created": created},
                draft=audit,
            )
            return len(subject_ids), created, version

    def rotate_encryption(
        self, *, batch: int = 1000, seal_plain: bool = False
    ) -> tuple[int, list[str], list[str]]:
        """Rewrite every embedding not sealed with the current key in the current form
        (an older key's, the older form, or plain) with the current key, ``batch`` rows a
        transaction. A row that does not open as the gallery's policy allows (plaintext
        in a gallery sealed with a key, changed, moved, or of a key not given) is not
        faceverify's: it is left as it is, never sealed into a real one (issue 37), and
        its id returned. With no key set: decrypt every row to plain.

        Returns: rows rewritten, the ids of the rows left, and of the plain rows sealed."""
        done, after = 0, ""
        left: list[str] = []
        sealed_plain: list[str] = []
        current = self.cipher.current if self.cipher is not None else None
        while True:
            with Session(self.engine) as session, session.begin():
                stale = (
                    (
                        Face.key_id.is_(None)
                        | (Face.key_id != current)
                        | (func.length(Face.embedding) % 4 == 0)  # the older form
                    )
                    if current
                    else Face.key_id.is_not(None)
                )
                rows = session.scalars(
                    select(Face).where(stale, Face.id > after).order_by(Face.id).limit(batch)
                ).all()
                for face in rows:
                    owner = (face.id, face.collection_id, face.subject_id)
                    # Plain rows are what a rotation seals (the operator's act; the CLI
                    # lists them); a sealed row must open as the gallery's policy says.
                    # In a gallery already sealed with a key no faceverify writes plain
                    # rows (a keyed start refuses to serve beside them): those are sealed
                    # only when the operator says they predate the key (``seal_plain``).
                    policy = SealPolicy(
                        refuse_plain=self.seal_policy.keyed and not seal_plain,
                        refuse_legacy=self.seal_policy.refuse_legacy,
                    )
                    data = readable(self.cipher, face.embedding, owner, face.key_id, policy=policy)
                    if data is not None and face.key_id is None and self.cipher is not None:
                        sealed_plain.append(face.id)
                    if data is None:
                        left.append(face.id)
                    elif self.cipher is not None:
                        face.embedding, face.key_id = self.cipher.seal(data, owner)
                        done += 1
                    else:
                        face.embedding, face.key_id = data, None
                        done += 1
                if len(rows) < batch:
                    if not left:
                        resealed(session, self.cipher)
                    break
                after = rows[-1].id
        if not left:
            self.seal_policy = SealPolicy(
                refuse_plain=self.cipher is not None, refuse_legacy=self.cipher is not None
            )
        return done, left, sealed_plain

    def export_faces(
        self, *, collection: str, now: datetime | None = None
    ) -> tuple[list[FaceRecord], list[str | None], list[bytes]]:
        """Every face of a collection with its subject's name and its embedding bytes,
        by subject then face. Subjects past their retention or expiry (due, not yet
        purged) are left out: they no longer match, so they are not handed on either
        (issue 37); nor is a row that does not open (logged)."""
        moment = now or datetime.now(UTC)
        with Session(self.engine) as session:
            row = session.get(CollectionRow, collection)
            days = row.retention_days if row is not None else None
            rows = session.execute(
                select(
                    Face,
                    Subject.name,
                    Subject.created_at,
                    Subject.last_used_at,
                    Subject.expires_at,
                )
                .join(
                    Subject,
                    (Subject.collection_id == Face.collection_id) & (Subject.id == Face.subject_id),
                )
                .where(Face.collection_id == collection)
                .order_by(Face.subject_id, Face.created_at, Face.id)
            ).all()
            faces, names, blobs = [], [], []
            for face, name, created, used, expires in rows:
                due = due_at(SubjectTimes(created, used, expires), days)
                if due is not None and moment >= due:
                    continue
                data = readable(
                    self.cipher,
                    face.embedding,
                    (face.id, face.collection_id, face.subject_id),
                    face.key_id,
                    policy=self.seal_policy,
                )
                if data is not None:
                    faces.append(_face_record(face))
                    names.append(name)
                    blobs.append(data)
            return faces, names, blobs

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
                select(
                    Face.id, Face.collection_id, Face.subject_id, Face.embedding, Face.key_id
                ).where(*where)
            )
            while part := result.fetchmany(LOAD_SLICE):
                start = len(ids)
                part_ids, part_collections, part_subjects, blobs, kids = zip(*part, strict=True)
                if self.seal_policy.refuse_plain or any(k is not None for k in kids):
                    opened = [
                        readable(self.cipher, b, (f, c, s), k, policy=self.seal_policy)
                        for b, f, c, s, k in zip(
                            blobs, part_ids, part_collections, part_subjects, kids, strict=True
                        )
                    ]
                    if any(o is None for o in opened):  # left out (logged)
                        keep = [i for i, o in enumerate(opened) if o is not None]
                        part_ids = tuple(part_ids[i] for i in keep)
                        part_collections = tuple(part_collections[i] for i in keep)
                        part_subjects = tuple(part_subjects[i] for i in keep)
                    blobs = tuple(o for o in opened if o is not None)
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
