"""Faces in bulk: an import (one transaction, all or none, under the same rules as
/enroll) and an export (the faces that still match)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from app.gallery import Consent, FaceRecord, Gallery, ImportBatch
from app.gallery.models import EMBEDDING_DTYPE
from app.privacy.events import AuditDraft, entry
from app.privacy.rules import import_rules, is_due


def checked_matrix(embeddings: np.ndarray, rows: int) -> np.ndarray:
    vectors = np.ascontiguousarray(embeddings, dtype=EMBEDDING_DTYPE)
    if vectors.ndim != 2 or len(vectors) != rows:
        raise ValueError("one embedding row per subject id")
    if not np.all(np.isfinite(vectors)):
        raise ValueError("embeddings must be finite")
    return vectors


def _first_names(subject_ids: list[str], names: list[str | None] | None) -> dict[str, str | None]:
    first: dict[str, str | None] = {}
    for i, subject in enumerate(subject_ids):
        if subject not in first or first[subject] is None:
            first[subject] = names[i] if names else None
    return first


def import_faces(
    gallery: Gallery,
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
    """Store many faces in one transaction (all or none): subjects that do not exist in
    the collection are created (with ``names`` and ``consent``), existing ones get the
    faces added. The change log gets one ``reload_collection`` entry, not one per face.

    Returns:
        Faces stored, subjects created, and the gallery version written.
    """
    vectors = checked_matrix(embeddings, len(subject_ids))
    now = datetime.now(UTC)
    event = entry(audit)
    with gallery.transaction(audit=event, lock_timeout=None) as tx:  # others' writes are short
        policy = tx.collections.policy(collection)
        existing = tx.subjects.times(collection)
        wanted = set(subject_ids)
        agreed = import_rules(collection, policy, wanted, existing, consent, now)
        first = _first_names(subject_ids, names)
        new = sorted(wanted - existing.keys())
        tx.subjects.create_many(
            [
                {
                    "collection_id": collection,
                    "id": s,
                    "name": first[s],
                    "created_at": now,
                    "last_used_at": now,
                    "consent": agreed,
                }
                for s in new
            ],
            batch,
        )
        face_ids = [str(uuid.uuid4()) for _ in subject_ids]
        for start in range(0, len(subject_ids), batch):
            end = min(start + batch, len(subject_ids))
            part = ImportBatch(
                face_ids[start:end],
                collection,
                subject_ids[start:end],
                vectors[start:end],
                encoder,
                pipeline_version,
                now,
            )
            tx.faces.import_batch(part, total=len(subject_ids))
            if progress:
                progress(end - start)
        tx.log.add("reload_collection", collection)
        event.about(
            collection=collection,
            subjects=[],
            detail={"faces": len(subject_ids), "subjects_created": len(new)},
        )
    return len(subject_ids), len(new), tx.version


def export_faces(
    gallery: Gallery, *, collection: str, now: datetime | None = None
) -> tuple[list[FaceRecord], list[str | None], list[bytes]]:
    """Every face of a collection with its subject's name and its embedding bytes, by
    subject then face. Subjects past their retention or expiry (due, not yet purged)
    are left out: they no longer match, so they are not handed on either (issue 37);
    nor is a row that does not open (logged)."""
    moment = now or datetime.now(UTC)
    days = None
    if gallery.collections.exists(collection=collection):
        days = gallery.collections.policy(collection=collection).retention_days
    faces, names, blobs = [], [], []
    for face, name, times, data in gallery.faces.export_rows(collection=collection):
        if is_due(times, days, moment) is None:
            faces.append(face)
            names.append(name)
            blobs.append(data)
    return faces, names, blobs
