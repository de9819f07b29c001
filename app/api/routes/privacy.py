"""/audit and /subjects/{id}/export: who used whose face data, and everything held
about one person (issue 27; docs/PRIVACY.md)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from app.api import admin_schemas as a
from app.api.audit import audited
from app.api.deps import CollectionDep, PrincipalDep, ServiceDep, require, target_collection
from app.api.routes.common import collection_out, face_out, problems, subject_out
from app.api.routes.subjects import SubjectIdPath
from app.api.schemas import to_utc
from app.errors import InvalidRequest, NotReady
from app.gallery.ids import nfkc
from app.gallery.models import COLLECTION_ID_PATTERN, EMBEDDING_DTYPE, SUBJECT_ID_PATTERN
from app.privacy.access import SubjectExport
from app.privacy.events import note

router = APIRouter(tags=["privacy"])


@router.get(
    "/audit",
    response_model=a.AuditPage,
    responses=problems(401, 403, 404, 422, 503),
    dependencies=[require("admin")],
)
@audited("read_audit")
def read_audit(
    request: Request,
    service: ServiceDep,
    who: PrincipalDep,
    subject: Annotated[str | None, Query(max_length=128, pattern=SUBJECT_ID_PATTERN)] = None,
    key_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] = None,
    action: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z_]+$")] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive.")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive.")] = None,
    collection: Annotated[str | None, Query(pattern=COLLECTION_ID_PATTERN)] = None,
    after: Annotated[
        str,
        Query(
            pattern=r"^([0-9]{1,18}|[0-9a-f]{32})$",
            description="The previous page's next_after (a key bound to a collection gets "
            "an opaque cursor, not an event id).",
        ),
    ] = "0",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> a.AuditPage:
    """Audit events, oldest first, filtered by subject, key, action, time and collection
    (a key bound to a collection sees its own only; an admin key of every collection
    sees every collection's unless it names one)."""
    trail = service.audit_trail()
    if trail is None:
        raise NotReady("The audit trail is off (FACEVERIFY_AUDIT_TRAIL=false).")
    if who.collection is not None or collection is not None:
        collection = target_collection(request, collection)
    bound = who.collection is not None
    cursor = AuditCursor(service.instance(), collection or "") if bound else None
    start, first = _utc(since), _after(after, cursor)
    if bound:
        # A key bound to a collection sees its current lifetime only (not a deleted
        # collection of the same id), and no global ids or chain positions, which
        # would tell how many events other collections made (issue 37).
        assert collection is not None
        record = service.get_collection(collection=collection)
        born, ended = trail.lifetime(collection=collection, created_at=record.created_at)
        start, first = max(start or born, born), max(first, ended)
    items = trail.query(
        collection=collection,
        subject=nfkc(subject),
        key_id=key_id,
        action=action,
        since=start,
        until=_utc(until),
        after=first,
        limit=limit,
    )
    note(detail={"events": len(items)})
    last = items[-1]["id"] if len(items) == limit else None
    if cursor is not None:
        items = [{**e, "id": None, "position": None, "chain": None} for e in items]
    return a.AuditPage(
        items=[a.AuditEventOut(**e) for e in items],
        next_after=cursor.token(last) if cursor is not None and last is not None else last,
    )


class AuditCursor:
    """An opaque ?after= for a key bound to a collection: the event id, AES-sealed with a
    key only this database's service knows (its instance id), so the key learns no
    global ids; a token of another collection or database does not open."""

    def __init__(self, instance: str, collection: str) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        key = hashlib.sha256(f"faceverify-audit-cursor:{instance}:{collection}".encode())
        self._cipher = Cipher(algorithms.AES(key.digest()), modes.ECB())  # noqa: S305 - one block

    def token(self, event_id: int) -> str:
        sealer = self._cipher.encryptor()
        return (sealer.update(event_id.to_bytes(8, "big") + bytes(8)) + sealer.finalize()).hex()

    def event_id(self, token: str) -> int | None:
        opener = self._cipher.decryptor()
        block = opener.update(bytes.fromhex(token)) + opener.finalize()
        return int.from_bytes(block[:8], "big") if block[8:] == bytes(8) else None


def _after(after: str, cursor: AuditCursor | None) -> int:
    """The event id ``after`` stands for: an id (not for a bound key), or a cursor."""
    if after == "0":
        return 0
    if cursor is not None:
        event_id = cursor.event_id(after) if len(after) == 32 else None
        if event_id is None:
            raise InvalidRequest("after is not a cursor this key was given (next_after).")
        return event_id
    if len(after) == 32:
        raise InvalidRequest("after is an event id (next_after) for this key.")
    return int(after)


@router.get(
    "/subjects/{subject_id}/export",
    response_model=a.SubjectExport,
    responses=problems(401, 403, 404, 422),
    dependencies=[require("admin")],
)
@audited("export_subject")
def export_subject(
    subject_id: SubjectIdPath,
    service: ServiceDep,
    collection: CollectionDep,
    include_embeddings: Annotated[
        bool, Query(description="Add each face's embedding (128 numbers).")
    ] = False,
) -> a.SubjectExport:
    """Everything the service holds about one person, in one JSON document: the record,
    its metadata and consent, every face (box, versions, template, created), the audit
    events about them, and when the schedule deletes them; embeddings only on request."""
    found = service.export_subject(
        collection=collection, subject_id=subject_id, embeddings=include_embeddings
    )
    note(detail={"include_embeddings": include_embeddings})
    return export_out(found)


def export_out(found: SubjectExport) -> a.SubjectExport:
    """The export as the API (and `faceverify subjects export`) gives it."""
    faces = []
    for face in found.faces:
        out = a.FaceExport(**face_out(face).model_dump())
        if face.id in found.embeddings:
            stored = np.frombuffer(found.embeddings[face.id], dtype=EMBEDDING_DTYPE)
            out.embedding = [float(v) for v in stored]
        faces.append(out)
    return a.SubjectExport(
        collection=collection_out(found.collection),
        subject=subject_out(found.subject),
        due_at=found.due_at,
        faces=faces,
        audit_events=[a.AuditEventOut(**e) for e in found.events],
        exported_at=found.exported_at,
    )


def _utc(value: datetime | None) -> datetime | None:
    """A query time in UTC (the store compares UTC times); one past the calendar's ends
    is clamped to them."""
    if value is None:
        return None
    try:
        return to_utc(value)
    except OverflowError:
        edge = datetime.min if value.year == 1 else datetime.max
        return edge.replace(tzinfo=UTC)
