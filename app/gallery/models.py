"""Storage rows (SQLAlchemy 2). No raw images are stored: only embeddings and boxes."""

from __future__ import annotations

from collections.abc import Collection as Collection_
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

SUBJECT_ID_MAX = 128
# Letters, digits (any script) and . _ - @ + : — safe in a URL path segment.
SUBJECT_ID_PATTERN = r"^[\w.@+:-]+$"
COLLECTION_ID_MAX = 64
# ASCII letters, digits, and . _ - after the first: safe in URLs, file names and metric
# labels, with no look-alike letters.
COLLECTION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
IDEMPOTENCY_KEY_MAX = 255
# Where databases made before collections put their subjects, and where requests go that
# name no collection.
DEFAULT_COLLECTION = "default"


# How an embedding is stored: little-endian float32, the native layout here.
EMBEDDING_DTYPE = np.dtype("<f4")


def embedding_matrix(blobs: list[bytes], dim: int) -> np.ndarray:
    """Stored embeddings as one read-only ``(len(blobs), dim)`` float32 view of a single
    joined buffer: no per-row arrays, no second copy (callers copy what they keep)."""
    if blobs and set(map(len, blobs)) != {dim * EMBEDDING_DTYPE.itemsize}:
        raise ValueError(f"stored embeddings are not all {dim} floats long")
    return np.frombuffer(b"".join(blobs), dtype=EMBEDDING_DTYPE).reshape(len(blobs), dim)


def keyed_in(
    key: Any, keys: Collection_[str], collection_column: Any, collection: str
) -> ColumnElement[bool]:
    """Rows whose ``key`` (a primary key) is one of ``keys``, in ``collection``.

    The collection is compared as an expression, which no index serves, so the key's is
    the one used: given two or more keys, SQLite chose the (collection, subject) index
    instead and read every row of the collection, ~350 ms for five faces at 1M (each new
    /identify paid it: issue 41). PostgreSQL plans by its statistics either way."""
    return and_(key.in_(sorted(keys)), (collection_column + "") == collection)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Collection(Base):
    """A separate gallery: its own subjects (ids unique within it) and faces."""

    __tablename__ = "collections"

    id: Mapped[str] = mapped_column(String(COLLECTION_ID_MAX), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The retention schedule (issue 27): a subject is deleted this many days after its
    # last enrollment or successful verify (None: kept until deleted).
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Enrollment of a new subject needs a consent reference.
    consent_required: Mapped[bool] = mapped_column(Boolean, default=False)
    # The decision rates (issue 36; None: the server's defaults): the false-positive
    # identification rate /identify names a subject at, and the largest false match
    # rate /verify accepts.
    identify_fpir: Mapped[float | None] = mapped_column(Float, nullable=True)
    verify_max_fmr: Mapped[float | None] = mapped_column(Float, nullable=True)


class Subject(Base):
    __tablename__ = "subjects"

    collection_id: Mapped[str] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(SUBJECT_ID_MAX), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(256))
    # "metadata" is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The last enrollment or successful verify (the retention clock; hour resolution).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Deleted at this time whatever the collection's schedule (given at enrollment).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The caller's consent record: {"reference": ..., "given_at": ...}.
    consent: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    faces: Mapped[list[Face]] = relationship(
        back_populates="subject", cascade="all, delete-orphan", passive_deletes=True
    )


class Face(Base):
    __tablename__ = "faces"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    collection_id: Mapped[str] = mapped_column(String(COLLECTION_ID_MAX))
    subject_id: Mapped[str] = mapped_column(String(SUBJECT_ID_MAX))
    # The embedding as little-endian float32 values (dlib_resnet_v1: 128, 512 bytes).
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    # The encryption key the embedding is sealed with (app/gallery/crypto.py); None: plain.
    key_id: Mapped[str | None] = mapped_column(String(16))
    box_left: Mapped[int] = mapped_column(Integer)
    box_top: Mapped[int] = mapped_column(Integer)
    box_right: Mapped[int] = mapped_column(Integer)
    box_bottom: Mapped[int] = mapped_column(Integer)
    detector_score: Mapped[float] = mapped_column(Float)
    encoder: Mapped[str] = mapped_column(String(64))
    pipeline_version: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    subject: Mapped[Subject] = relationship(back_populates="faces")

    __table_args__ = (
        ForeignKeyConstraint(
            ["collection_id", "subject_id"],
            ["subjects.collection_id", "subjects.id"],
            ondelete="CASCADE",
        ),
        Index("ix_faces_collection_subject", "collection_id", "subject_id"),
        # Migration 0008: the plaintext rows, found at once by a start with a key.
        Index(
            "ix_faces_plain",
            "id",
            sqlite_where=text("key_id IS NULL"),
            postgresql_where=text("key_id IS NULL"),
        ),
    )


class GalleryState(Base):
    """One row: a counter bumped by every write, so each process can tell in one cheap
    query whether its in-memory index is behind the database."""

    __tablename__ = "gallery_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    # A random id set by migration 0004: which database an index snapshot came from.
    instance: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Migration 0008 (issue 37): the ids of the keys some embedding is sealed with (a
    # JSON list), and whether every embedding is sealed in the current form.
    key_ids: Mapped[str | None] = mapped_column(Text, nullable=True)
    sealed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class GalleryEvent(Base):
    """What each write changed (ids only, never embeddings), keyed by the version it
    made, so a process that is behind replays just the changes since its version."""

    __tablename__ = "gallery_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(BigInteger)
    # add_face | delete_face | delete_subject | delete_collection
    kind: Mapped[str] = mapped_column(String(32))
    collection_id: Mapped[str] = mapped_column(String(COLLECTION_ID_MAX))
    # Empty for delete_collection.
    subject_id: Mapped[str] = mapped_column(String(SUBJECT_ID_MAX))
    face_id: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (Index("ix_gallery_events_version", "version"),)


class IdempotencyRecord(Base):
    """An enrollment made with an Idempotency-Key: written in the same transaction as
    its faces, so a retry of a request whose answer was lost finds either this row (and
    gets the first answer again) or nothing stored at all."""

    __tablename__ = "idempotency_records"

    # sha256 of the API key that sent it: one client's keys never collide with another's.
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    collection_id: Mapped[str] = mapped_column(String(COLLECTION_ID_MAX))
    subject_id: Mapped[str] = mapped_column(String(SUBJECT_ID_MAX))
    face_ids: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class ApiKey(Base):
    """An API key: only its sha256 is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))  # enough to recognise a key in a list
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    scopes: Mapped[str] = mapped_column(String(64))  # "enroll+verify"
    # The collection the key sees and changes; None (admin keys only): every collection.
    # No foreign key: deleting a collection revokes its keys instead of unbinding them.
    collection_id: Mapped[str | None] = mapped_column(String(COLLECTION_ID_MAX))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An AWS credential (issue 40): its access key id, and its secret sealed with the
    # credentials key (SigV4 needs the secret itself; app/keys.py SecretBox).
    access_key_id: Mapped[str | None] = mapped_column(String(32), unique=True, index=True)
    secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)


class RekognitionUser(Base):
    """A Rekognition user of a collection (CreateUser): a name faces are associated with."""

    __tablename__ = "rekognition_users"

    collection_id: Mapped[str] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(SUBJECT_ID_MAX), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The ClientRequestToken of the CreateUser that made it: a retry with it succeeds.
    request_token: Mapped[str | None] = mapped_column(String(64))


class RekognitionUserFace(Base):
    """A face associated with a user (AssociateFaces): at most one user a face. Deleting
    the face by any path deletes the association (ON DELETE CASCADE)."""

    __tablename__ = "rekognition_user_faces"

    face_id: Mapped[str] = mapped_column(
        ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True
    )
    collection_id: Mapped[str] = mapped_column(String(COLLECTION_ID_MAX))
    user_id: Mapped[str] = mapped_column(String(SUBJECT_ID_MAX))

    __table_args__ = (
        ForeignKeyConstraint(
            ["collection_id", "user_id"],
            ["rekognition_users.collection_id", "rekognition_users.id"],
            ondelete="CASCADE",
        ),
        Index("ix_rekognition_user_faces_user", "collection_id", "user_id"),
    )


class DeletedCollection(Base):
    """A collection that was deleted and not created again since: a key from
    FACEVERIFY_API_KEYS bound to it does not bring it back at start-up (issue 25)."""

    __tablename__ = "deleted_collections"

    id: Mapped[str] = mapped_column(String(COLLECTION_ID_MAX), primary_key=True)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RevokedEnvKey(Base):
    """A FACEVERIFY_API_KEYS key revoked with the collection it was bound to. Such keys
    live in each process's environment, not here, so their revocation is kept by hash:
    they stay refused after a restart and when a collection of that name is made again."""

    __tablename__ = "revoked_env_keys"

    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    collection_id: Mapped[str] = mapped_column(String(COLLECTION_ID_MAX))
    revoked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexSnapshotRecord(Base):
    """An index snapshot saved from this database (app/vectors/snapshot.py): its random
    token, the gallery version it reflects and the sha256 of its manifest (which holds
    each file's sha256). A snapshot whose token this database does not hold with that
    version and digest came from another history (a restored backup) and is rebuilt."""

    __tablename__ = "index_snapshots"

    token: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Who used whose face data, when, and with what outcome (issue 27): one row a
    request. Never an image, an embedding or a key. ``position`` and ``chain`` are set
    by the sealer (app/privacy/trail.py): a dense sequence and a sha256 hash chain over
    the events in that order, so a change, a removal or a reordering shows."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(64))
    collection_id: Mapped[str | None] = mapped_column(String(COLLECTION_ID_MAX))
    action: Mapped[str] = mapped_column(String(32))
    # The subject ids it touched as "|a|b|" (ids never hold "|"): filterable with LIKE.
    subjects: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(Integer)
    code: Mapped[str | None] = mapped_column(String(64))
    match: Mapped[bool | None] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)
    client: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    position: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    chain: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_collection_at", "collection_id", "at"),
    )


class AuditHead(Base):
    """One row: the last sealed position and its chain value, and the anchor: the
    position and chain value of the last event pruned, where a verification starts."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, default=0)
    chain: Mapped[str] = mapped_column(String(64))
    anchor_position: Mapped[int] = mapped_column(BigInteger, default=0)
    anchor_chain: Mapped[str] = mapped_column(String(64))
    anchor_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
