"""Subject reads and deletes: a delete is one transaction with its audit event (the
vector backend applies it when it commits), and the embeddings are erased from every
file before the answer (so identify never returns a deleted face)."""

from __future__ import annotations

from app.gallery import FaceRecord, Gallery, SubjectRecord
from app.privacy.erasure import Erasure
from app.privacy.events import entry


class SubjectRecords:
    def __init__(self, gallery: Gallery, erasure: Erasure) -> None:
        self.gallery = gallery
        self.erasure = erasure

    def get(self, *, collection: str, subject_id: str) -> tuple[SubjectRecord, list[FaceRecord]]:
        subject = self.gallery.subjects.get(collection=collection, subject_id=subject_id)
        faces = self.gallery.faces.of_subject(collection=collection, subject_id=subject_id)
        return subject, faces

    def page(
        self, *, collection: str, offset: int, limit: int, prefix: str | None = None
    ) -> tuple[list[SubjectRecord], int]:
        return self.gallery.subjects.page(
            collection=collection, offset=offset, limit=limit, prefix=prefix
        )

    def delete(self, *, collection: str, subject_id: str) -> int:
        """Delete the subject and every embedding of it, from the database and from this
        process's index, before returning. Returns how many faces were deleted."""
        event = entry()
        with self.gallery.transaction(audit=event) as tx:
            face_ids = tx.subjects.delete(collection, subject_id)
            event.about(
                collection=collection,
                subjects=[subject_id],
                detail={"faces_deleted": len(face_ids)},
            )
        self.erasure.erased(face_ids)
        return len(face_ids)

    def delete_face(self, *, collection: str, subject_id: str, face_id: str) -> None:
        """Delete one face of a subject; the subject stays, even with no faces left."""
        event = entry()
        with self.gallery.transaction(audit=event) as tx:
            tx.faces.delete(collection, subject_id, face_id)
            event.about(collection=collection, subjects=[subject_id], detail={"face_id": face_id})
        self.erasure.erased([face_id])
