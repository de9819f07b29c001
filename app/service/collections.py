"""Collection CRUD: each write one transaction with its audit event; a delete revokes
the keys bound to the collection and erases its embeddings before the answer."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from app.errors import CollectionExists, CollectionNotFound, CollectionProtected
from app.gallery import CollectionRecord, Gallery
from app.gallery.models import DEFAULT_COLLECTION
from app.privacy.erasure import Erasure
from app.privacy.events import entry
from app.privacy.rules import retention_days as checked_days
from app.vectors import VectorBackend


class Collections:
    def __init__(
        self, gallery: Gallery, erasure: Erasure, vectors: VectorBackend | None = None
    ) -> None:
        """``vectors``: where the running model's counts come from (None: the command
        line, which counts nothing)."""
        self.gallery = gallery
        self.erasure = erasure
        self.vectors = vectors

    def create(
        self,
        *,
        collection: str,
        retention_days: int | None = None,
        consent_required: bool = False,
        identify_fpir: float | None = None,
        verify_max_fmr: float | None = None,
    ) -> CollectionRecord:
        """An empty collection with its retention schedule, consent rule and decision
        rates; CollectionExists if the id is taken."""
        days = checked_days(retention_days)
        event = entry()
        with self.gallery.transaction(audit=event) as tx:
            record = tx.collections.create(
                collection,
                retention_days=days,
                consent_required=consent_required,
                identify_fpir=identify_fpir,
                verify_max_fmr=verify_max_fmr,
            )
            event.about(collection=collection, subjects=[])
        return record

    def ensure(self, *, collection: str) -> bool:
        """Create the collection unless it exists; whether this call created it (another
        process creating it at the same moment is not an error)."""
        if self.gallery.collections.exists(collection=collection):
            return False
        try:
            self.create(collection=collection)
        except CollectionExists:
            return False
        return True

    def update(self, *, collection: str, changes: dict[str, Any]) -> CollectionRecord:
        """Set a collection's retention_days, consent_required, identify_fpir and/or
        verify_max_fmr (the keys given; a rate of None: the server's default)."""
        if "retention_days" in changes:
            changes = {**changes, "retention_days": checked_days(changes["retention_days"])}
        event = entry()
        with self.gallery.transaction(audit=event) as tx:
            row = tx.collections.update(collection, **changes)
            event.about(
                collection=collection,
                subjects=[],
                detail={
                    "retention_days": row.retention_days,
                    "consent_required": row.consent_required,
                    "identify_fpir": row.identify_fpir,
                    "verify_max_fmr": row.verify_max_fmr,
                },
            )
        return self.get(collection=collection)

    def delete(self, *, collection: str, env_key_hashes: Collection[str] = ()) -> CollectionRecord:
        """Delete a collection, every subject and embedding of it and the keys bound to
        it (the database's, and ``env_key_hashes``: the FACEVERIFY_API_KEYS keys bound to
        it, kept as revoked), from the database and this process's index, before
        returning; the other processes replay the deletion before their next search."""
        if collection == DEFAULT_COLLECTION:
            raise CollectionProtected(
                f"The {DEFAULT_COLLECTION!r} collection cannot be deleted: requests that "
                "name no collection use it. Delete its subjects instead.",
                collection=collection,
            )
        event = entry()
        now = datetime.now(UTC)
        with self.gallery.transaction(audit=event) as tx:
            record = tx.collections.delete(collection, now)
            tx.collections.revoke_keys(collection, env_key_hashes, now)
            event.about(
                collection=collection,
                subjects=[],
                detail={"subjects_deleted": record.subjects, "faces_deleted": record.faces},
            )
        self.erasure.erased([], collection)
        return record

    def list(self) -> list[CollectionRecord]:
        return self.gallery.collections.all()

    def get(self, *, collection: str) -> CollectionRecord:
        return self.gallery.collections.get(collection=collection)

    def exists(self, *, collection: str) -> bool:
        return self.gallery.collections.exists(collection=collection)

    def deleted(self, *, collection: str) -> bool:
        """Whether the collection was deleted and not created again since."""
        return self.gallery.collections.deleted(collection=collection)

    def require(self, collection: str) -> None:
        """CollectionNotFound unless the collection exists. The default one always does
        (migration 0003 makes it; delete refuses it), so the common request skips a
        query (~0.4 ms under load, holding the GIL)."""
        if collection == DEFAULT_COLLECTION:
            return
        if not self.gallery.collections.exists(collection=collection):
            raise CollectionNotFound.for_id(collection)

    def counts(self, collection: str | None = None) -> dict[str, int]:
        """Faces and subjects of the running model: of one collection, or of all (while
        the index loads: what is loaded so far)."""
        return self.vectors.counts(collection) if self.vectors is not None else {}

    def face_counts(self) -> dict[str, int]:
        """Faces of the running model per collection (those with any)."""
        return self.vectors.face_counts() if self.vectors is not None else {}
