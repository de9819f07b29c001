"""/subjects: list, read and delete enrolled people and their faces, in one collection."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api import schemas as s
from app.api.audit import audited
from app.api.deps import CollectionDep, ServiceDep, require
from app.api.routes.common import face_out, problems, subject_out
from app.privacy.events import note

router = APIRouter(tags=["subjects"])

SubjectIdPath = Annotated[s.SubjectId, Path()]


@router.get(
    "/subjects",
    response_model=s.SubjectPage,
    responses=problems(401, 403, 422),
    dependencies=[require("admin")],
)
@audited("list_subjects")
def list_subjects(
    service: ServiceDep,
    collection: CollectionDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    prefix: Annotated[str | None, Query(max_length=128, description="Id prefix filter.")] = None,
) -> s.SubjectPage:
    """List the collection's subjects by id, a page at a time."""
    items, total = service.list_subjects(
        collection=collection, offset=offset, limit=limit, prefix=prefix
    )
    note(subjects=[x.id for x in items])
    return s.SubjectPage(
        items=[subject_out(x) for x in items], total=total, offset=offset, limit=limit
    )


@router.get(
    "/subjects/{subject_id}",
    response_model=s.SubjectDetailOut,
    responses=problems(401, 403, 404, 422),
    dependencies=[require("admin")],
)
@audited("read_subject")
def get_subject(
    subject_id: SubjectIdPath, service: ServiceDep, collection: CollectionDep
) -> s.SubjectDetailOut:
    """One subject with its enrolled faces (boxes and versions; never embeddings)."""
    subject, faces = service.get_subject(collection=collection, subject_id=subject_id)
    return s.SubjectDetailOut(
        **subject_out(subject).model_dump(), faces=[face_out(f) for f in faces]
    )


@router.delete(
    "/subjects/{subject_id}",
    response_model=s.DeleteSubjectResponse,
    responses=problems(401, 403, 404, 422),
    dependencies=[require("enroll")],
)
@audited("delete_subject")
def delete_subject(
    subject_id: SubjectIdPath, service: ServiceDep, collection: CollectionDep
) -> s.DeleteSubjectResponse:
    """Delete a subject and every embedding of it, from the database and the index."""
    deleted = service.delete_subject(collection=collection, subject_id=subject_id)
    return s.DeleteSubjectResponse(subject_id=subject_id, deleted=True, faces_deleted=deleted)


@router.delete(
    "/subjects/{subject_id}/faces/{face_id}",
    response_model=s.DeleteFaceResponse,
    responses=problems(401, 403, 404, 422),
    dependencies=[require("enroll")],
)
@audited("delete_face")
def delete_face(
    subject_id: SubjectIdPath,
    face_id: Annotated[str, Path(min_length=1, max_length=64)],
    service: ServiceDep,
    collection: CollectionDep,
) -> s.DeleteFaceResponse:
    """Delete one enrolled face of a subject."""
    service.delete_face(collection=collection, subject_id=subject_id, face_id=face_id)
    remaining = service.get_subject(collection=collection, subject_id=subject_id)[0].face_count
    return s.DeleteFaceResponse(
        subject_id=subject_id, face_id=face_id, deleted=True, face_count=remaining
    )
