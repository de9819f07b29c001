"""The subject and collection reads and deletes: the store's records, and the search
told of every delete before the answer (so identify never returns a deleted face)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from app.errors import CollectionNotFound, CollectionProtected
from app.gallery.models import DEFAULT_COLLECTION
from app.gallery.search import GallerySearch
from app.gallery.store import CollectionRecord, FaceRecord, GalleryStore, SubjectRecord


class GalleryRecords:
    """Subject and collection CRUD (FaceService sets ``store`` and ``search``)."""

    store: GalleryStore
    search: GallerySearch

    # ---- subjects --------------------------------------------------------------------
    def get_subject(
        self, *, collection: str, subject_id: str
    ) -> tuple[SubjectRecord, list[FaceRecord]]:
        subject = self.store.get_subject(collection=collection, subject_id=subject_id)
        return subject, self.store.list_faces(collection=collection, subject_id=subject_id)

    def list_subjects(
        self, *, collection: str, offset: int, limit: int, prefix: str | None = None
    ) -> tuple[list[SubjectRecord], int]:
        return self.store.list_subjects(
            collection=collection, offset=offset, limit=limit, prefix=prefix
        )

    def delete_subject(self, *, collection: str, subject_id: str) -> int:
        """Delete the subject and every embedding of it, from the database and from this
        process's index, before returning. Returns how many faces were deleted."""
        face_ids, version = self.store.delete_subject(collection=collection, subject_id=subject_id)
        self.search.subject_removed(collection, subject_id)
        self.search.advanced(version)
        erase(self.store, self.search, face_ids)
        return len(face_ids)

    def delete_face(self, *, collection: str, subject_id: str, face_id: str) -> None:
        version = self.store.delete_face(
            collection=collection, subject_id=subject_id, face_id=face_id
        )
        self.search.faces_removed(collection, [face_id])
        self.search.advanced(version)
        erase(self.store, self.search, [face_id])

    # ---- collections -----------------------------------------------------------------
    def create_collection(
        self,
        *,
        collection: str,
        retention_days: int | None = None,
        consent_required: bool = False,
        identify_fpir: float | None = None,
        verify_max_fmr: float | None = None,
    ) -> CollectionRecord:
        return self.store.create_collection(
            collection=collection,
            retention_days=retention_days,
            consent_required=consent_required,
            identify_fpir=identify_fpir,
            verify_max_fmr=verify_max_fmr,
        )

    def update_collection(self, *, collection: str, changes: dict[str, Any]) -> CollectionRecord:
        """Set a collection's retention_days, consent_required, identify_fpir and/or
        verify_max_fmr (the keys given)."""
        self.store.update_collection(collection=collection, **changes)
        return self.store.get_collection(collection=collection)

    def list_collections(self) -> list[CollectionRecord]:
        return self.store.list_collections()

    def get_collection(self, *, collection: str) -> CollectionRecord:
        return self.store.get_collection(collection=collection)

    def require_collection(self, collection: str) -> None:
        """CollectionNotFound unless the collection exists. The default one always does
        (migration 0003 makes it; delete_collection refuses it), so the common request
        skips a query (~0.4 ms under load, holding the GIL)."""
        if collection == DEFAULT_COLLECTION:
            return
        if not self.store.collection_exists(collection=collection):
            raise CollectionNotFound.for_id(collection)

    def delete_collection(
        self, *, collection: str, env_key_hashes: Collection[str] = ()
    ) -> CollectionRecord:
        """Delete a collection, every subject and embedding of it and the keys bound to
        it, from the database and this process's index, before returning; the other
        processes replay the deletion before their next search."""
        if collection == DEFAULT_COLLECTION:
            raise CollectionProtected(
                f"The {DEFAULT_COLLECTION!r} collection cannot be deleted: requests that "
                "name no collection use it. Delete its subjects instead.",
                collection=collection,
            )
        record, version = self.store.delete_collection(
            collection=collection, env_key_hashes=env_key_hashes
        )
        self.search.collection_dropped(collection)
        self.search.advanced(version)
        erase(self.store, self.search, [], collection)
        return record

    def gallery_counts(self, collection: str | None = None) -> dict[str, int]:
        """Faces and subjects of the running model: of one collection, or of all (while
        the index loads: what is loaded so far)."""
        return self.search.counts(collection)

    def collection_face_counts(self) -> dict[str, int]:
        """Faces of the running model per collection (those with any)."""
        return self.search.face_counts()


def erase(
    store: GalleryStore, search: GallerySearch, face_ids: list[str], collection: str | None = None
) -> None:
    """After a delete, before its answer: the embeddings' bytes out of the index
    snapshots and the database's files (app/gallery/erasure.py)."""
    search.erase(face_ids, collection)
    store.erased(face_ids=face_ids)
