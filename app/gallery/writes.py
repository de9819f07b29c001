"""Writing records: collections, an enrollment's faces, deletes. Each write is one
transaction that also bumps the version and logs its change (changelog.py)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.errors import (
    CollectionExists,
    CollectionNotFound,
    ConsentRequired,
    FaceNotFound,
    InvalidRequest,
    SubjectExists,
    SubjectExpired,
    SubjectNotFound,
)
from app.gallery import pgvector
from app.gallery.audit import AuditDraft, stage
from app.gallery.changelog import _bump_version, _log
from app.gallery.engine import StoreBase
from app.gallery.idempotency import _record_idempotency, find_idempotent
from app.gallery.ids import check_stored_subject_id
from app.gallery.models import (
    EMBEDDING_DTYPE,
    ApiKey,
    DeletedCollection,
    Face,
    IdempotencyRecord,
    RevokedEnvKey,
    Subject,
)
from app.gallery.models import Collection as CollectionRow
from app.gallery.reads import _of_subject
from app.gallery.records import (
    CollectionRecord,
    Consent,
    FaceRecord,
    IdempotencyClaim,
    IdempotencyKeyTaken,
    NewFace,
    SubjectRecord,
    SubjectTimes,
    _aware,
    _face_record,
    _subject_record,
    checked_consent,
    checked_retention_days,
    due_at,
)
from app.gallery.sealing import note_key


class Unset:
    """A keyword not given (None is a value: "no retention")."""


UNSET = Unset()


class DueCheck:
    """A retention purge's test, made again inside the deleting transaction, and the
    audit event the deletion is recorded with."""

    def __init__(self, now: datetime, retention_days: int | None, draft: AuditDraft) -> None:
        self.now = now
        self.retention_days = retention_days
        self.draft = draft

    def still_due(self, session: Session, subject: Subject) -> bool:
        times = SubjectTimes(subject.created_at, subject.last_used_at, subject.expires_at)
        due = due_at(times, self.retention_days)
        return due is not None and _aware(self.now) >= due


class Writes(StoreBase):
    """Collections, faces and subjects, written one transaction each."""

    def create_collection(
        self,
        *,
        collection: str,
        retention_days: int | None = None,
        consent_required: bool = False,
        identify_fpir: float | None = None,
        verify_max_fmr: float | None = None,
    ) -> CollectionRecord:
        """Create an empty collection (with its retention schedule, consent rule and
        decision rates); CollectionExists if the id is taken."""
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, self.busy_timeout)  # queue with the other writers
            if session.get(CollectionRow, collection) is not None:
                raise CollectionExists(
                    f"Collection {collection!r} already exists.", collection=collection
                )
            row = CollectionRow(
                id=collection,
                created_at=datetime.now(UTC),
                retention_days=_retention(retention_days),
                consent_required=consent_required,
                identify_fpir=identify_fpir,
                verify_max_fmr=verify_max_fmr,
            )
            session.add(row)
            session.execute(delete(DeletedCollection).where(DeletedCollection.id == collection))
            session.flush()
            # Every version has its change: a gap in the log makes every process reload
            # every index (issue 25: 47 s on a 1.8M-face server after POST /collections).
            _log(session, version, [("create_collection", collection, "", None)])
            stage(session, collection=collection, subjects=[])
            return CollectionRecord(
                row.id,
                row.created_at,
                0,
                0,
                retention_days,
                consent_required,
                identify_fpir,
                verify_max_fmr,
            )

    def ensure_collection(self, *, collection: str) -> bool:
        """Create the collection unless it exists; whether this call created it (another
        process creating it at the same moment is not an error)."""
        with Session(self.engine) as session:
            if session.get(CollectionRow, collection) is not None:
                return False
        try:
            self.create_collection(collection=collection)
        except CollectionExists:
            return False
        return True

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
            stage(
                session,
                collection=collection,
                subjects=[],
                detail={"subjects_deleted": int(n_subjects), "faces_deleted": int(n_faces)},
            )
            return record, version

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
        expires_at: datetime | None = None,
        consent: Consent | None = None,
        now: datetime | None = None,
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
            ConsentRequired: the collection requires consent, and neither this request
                nor the subject has it.

        ``expires_at`` and ``consent`` are stored with the subject (replacing earlier
        ones); the subject's retention clock (last_used_at) restarts at ``now``.

        Returns:
            The stored faces, the subject afterwards, and the gallery version written.
        """
        with Session(self.engine) as session, session.begin():
            # Writers queue on the version row, so what the checks below read cannot
            # change before this transaction commits.
            version = _bump_version(session, self.busy_timeout)
            if idempotency is not None and find_idempotent(
                session, idempotency.owner, idempotency.key
            ):
                raise IdempotencyKeyTaken(idempotency.key)
            collection_row = session.get(CollectionRow, collection)
            if collection_row is None:
                raise CollectionNotFound.for_id(collection)
            subject = _subject_to_write(session, collection, subject_id, add, name, metadata)
            moment = now or datetime.now(UTC)
            _apply_subject_rules(subject, collection_row, add, consent, expires_at, moment)
            subject.last_used_at = moment
            rows, vectors = _face_rows(collection, subject_id, faces, encoder, pipeline_version)
            if self.cipher is not None:
                for row in rows:
                    row.embedding, row.key_id = self.cipher.seal(
                        row.embedding, (row.id, collection, subject_id)
                    )
                note_key(session, self.cipher)
            session.add_all(rows)
            session.flush()
            if rows:
                self._store_vectors(session, rows, vectors)
            _log(session, version, [("add_face", collection, subject_id, r.id) for r in rows])
            stage(
                session,
                collection=collection,
                subjects=[subject_id],
                detail={"faces_added": [r.id for r in rows]},
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

    def delete_subject(
        self, *, collection: str, subject_id: str, due: DueCheck | None = None
    ) -> tuple[list[str], int]:
        """Delete a subject and every face of it. Returns the deleted face ids and the
        gallery version written. ``due`` (a retention purge): delete only if the
        subject is still due when the transaction looks (a verify may have just used
        it), recording the purge as ``due``'s audit event; SubjectNotFound otherwise."""
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, self.busy_timeout)
            subject = session.get(Subject, (collection, subject_id))
            if subject is None or (due is not None and not due.still_due(session, subject)):
                raise SubjectNotFound.for_id(subject_id)
            face_ids = list(
                session.scalars(select(Face.id).where(*_of_subject(collection, subject_id))).all()
            )
            session.execute(delete(Face).where(*_of_subject(collection, subject_id)))
            session.execute(
                delete(Subject).where(Subject.collection_id == collection, Subject.id == subject_id)
            )
            _log(session, version, [("delete_subject", collection, subject_id, None)])
            stage(
                session,
                collection=collection,
                subjects=[subject_id],
                detail={"faces_deleted": len(face_ids)},
                draft=due.draft if due is not None else None,
            )
            return face_ids, version

    def update_collection(
        self,
        *,
        collection: str,
        retention_days: int | None | Unset = UNSET,
        consent_required: bool | Unset = UNSET,
        identify_fpir: float | None | Unset = UNSET,
        verify_max_fmr: float | None | Unset = UNSET,
    ) -> None:
        """Set a collection's retention schedule, consent rule and decision rates (what
        is given; a rate of None: the server's default)."""
        with Session(self.engine) as session, session.begin():
            version = _bump_version(session, self.busy_timeout)
            row = session.get(CollectionRow, collection)
            if row is None:
                raise CollectionNotFound.for_id(collection)
            if not isinstance(retention_days, Unset):
                row.retention_days = _retention(retention_days)
            if not isinstance(consent_required, Unset):
                row.consent_required = consent_required
            if not isinstance(identify_fpir, Unset):
                row.identify_fpir = identify_fpir
            if not isinstance(verify_max_fmr, Unset):
                row.verify_max_fmr = verify_max_fmr
            # A version of its own, so cached schedules are read again.
            _log(session, version, [("create_collection", collection, "", None)])
            stage(
                session,
                collection=collection,
                subjects=[],
                detail={
                    "retention_days": row.retention_days,
                    "consent_required": bool(row.consent_required),
                    "identify_fpir": row.identify_fpir,
                    "verify_max_fmr": row.verify_max_fmr,
                },
            )

    def touch_subject(self, *, collection: str, subject_id: str, now: datetime) -> None:
        """Restart a subject's retention clock (a successful verify): no version bump, no
        change log (nothing an index holds changed)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(Subject)
                .where(
                    Subject.collection_id == collection,
                    Subject.id == subject_id,
                    (Subject.last_used_at.is_(None)) | (Subject.last_used_at < now),
                )
                .values(last_used_at=now)
            )

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
            stage(
                session, collection=collection, subjects=[subject_id], detail={"face_id": face_id}
            )
            return version

    def _store_vectors(self, session: Session, faces: list[Face], vectors: np.ndarray) -> None:
        """The faces' embeddings into face_vectors too, in the same transaction."""
        if self.vector_dim is None or vectors.shape[1] != self.vector_dim:
            return
        pgvector.insert_vectors(
            session.connection(),
            [(f.id, f.collection_id, f.subject_id, f.encoder) for f in faces],
            vectors,
        )


def _apply_subject_rules(
    subject: Subject,
    collection_row: CollectionRow,
    add: bool,
    consent: Consent | None,
    expires_at: datetime | None,
    moment: datetime,
) -> None:
    """The rules an enrollment meets where it commits: no adding to a subject past its
    retention (decided here: checked before the photos were read, it could become due
    meanwhile; issue 37), consent where the collection requires it (not dated in the
    future), and the expiry."""
    if add:
        times = SubjectTimes(subject.created_at, subject.last_used_at, subject.expires_at)
        due = due_at(times, collection_row.retention_days)
        if due is not None and moment >= due:
            raise SubjectExpired.for_subject(subject.id, due)
    if consent is not None:
        try:
            subject.consent = checked_consent(consent, moment).as_json()
        except ValueError as exc:
            raise InvalidRequest(f"{exc}.") from exc
    if collection_row.consent_required and not subject.consent:
        raise ConsentRequired.for_collection(collection_row.id)
    if expires_at is not None:
        subject.expires_at = expires_at


def _retention(days: int | None) -> int | None:
    """The API's bounds on a retention schedule, for every caller (the CLI too)."""
    try:
        return checked_retention_days(days)
    except ValueError as exc:
        raise InvalidRequest(f"{exc}.") from exc


def _subject_to_write(
    session: Session,
    collection: str,
    subject_id: str,
    add: bool,
    name: str | None,
    metadata: dict[str, Any] | None,
) -> Subject:
    """The subject an enrollment writes to: created (``add=False``: it must be new) or
    found and updated with ``name``/``metadata`` when given (``add=True``)."""
    subject = session.get(Subject, (collection, subject_id))
    if subject is None and add:
        raise SubjectNotFound.for_id(subject_id)
    if subject is not None and not add:
        raise SubjectExists(
            f"Subject {subject_id!r} already exists; send add=true to add faces to it.",
            subject_id=subject_id,
        )
    if subject is None:
        try:  # every path that creates a subject applies the API's rules (issue 37)
            check_stored_subject_id(subject_id)
        except ValueError as exc:
            raise InvalidRequest(f"Not a subject id the API can address: {exc}.") from exc
        subject = Subject(collection_id=collection, id=subject_id, name=name, meta=metadata)
        session.add(subject)
        return subject
    if name is not None:
        subject.name = name
    if metadata is not None:
        subject.meta = metadata
    return subject


def _face_rows(
    collection: str, subject_id: str, faces: list[NewFace], encoder: str, pipeline_version: str
) -> tuple[list[Face], np.ndarray]:
    """The rows of ``faces`` and their embeddings as one matrix; ValueError if an
    embedding is not a vector of finite floats."""
    rows, vectors = [], []
    for face in faces:
        vector = np.asarray(face.embedding, dtype=EMBEDDING_DTYPE)
        if vector.ndim != 1 or not len(vector) or not np.all(np.isfinite(vector)):
            raise ValueError("an embedding must be a vector of finite floats")
        vectors.append(vector)
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
    return rows, np.stack(vectors) if vectors else np.zeros((0, 0), dtype=EMBEDDING_DTYPE)
