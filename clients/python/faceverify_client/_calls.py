"""What each method sends and what it gets back, shared by the sync and the async
client: a :class:`Call` is built here, sent by ``Client`` or ``AsyncClient``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter

from faceverify_client import models as m
from faceverify_client._photos import Photo, photo_bytes

T = TypeVar("T")


@dataclass
class Call(Generic[T]):
    method: str
    path: str
    result: Any  # a model class, or a TypeAdapter for lists
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, str] | None = None
    files: list[tuple[str, tuple[str, bytes]]] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Safe to send again: reads, deletes, and an enroll with an Idempotency-Key.
    retry: bool = True

    def parse(self, payload: Any) -> T:
        if isinstance(self.result, TypeAdapter):
            return self.result.validate_python(payload)  # type: ignore[no-any-return]
        model: type[BaseModel] = self.result
        return model.model_validate(payload)  # type: ignore[return-value]


def seg(value: str) -> str:
    """A path segment, percent-encoded (subject ids may hold '@', '+', ':')."""
    return quote(value, safe="")


def _form(**fields: Any) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, dict):
            out[name] = json.dumps(value)
        else:
            out[name] = str(value)
    return out


def enroll(
    subject_id: str,
    photos: Photo | Sequence[Photo],
    *,
    collection: str | None = None,
    name: str | None = None,
    metadata: dict[str, Any] | None = None,
    face: str = "single",
    add: bool = False,
    force: bool = False,
    expires_at: str | None = None,
    consent: dict[str, str] | None = None,
    idempotency_key: str | None = None,
) -> Call[m.EnrollResponse]:
    many = photos if isinstance(photos, (list, tuple)) else [photos]
    files = [("image", photo_bytes(p)) for p in many]
    data = _form(
        subject_id=subject_id,
        collection=collection,
        name=name,
        metadata=metadata,
        face=face,
        add=add,
        force=force,
        expires_at=expires_at,
        consent=consent,
    )
    # A retried enroll must never store twice: it always carries an Idempotency-Key.
    key = idempotency_key or f"fvc-{uuid.uuid4()}"
    return Call("POST", "/enroll", m.EnrollResponse, data=data, files=files,
                headers={"Idempotency-Key": key})  # fmt: skip


def verify(
    subject_id: str,
    photo: Photo,
    *,
    collection: str | None = None,
    prior: float | None = None,
    mode: str | None = None,
    max_fmr: float | None = None,
) -> Call[m.VerifyResponse]:
    data = _form(
        subject_id=subject_id, collection=collection, prior=prior, mode=mode, max_fmr=max_fmr
    )
    return Call("POST", "/verify", m.VerifyResponse, data=data,
                files=[("image", photo_bytes(photo))])  # fmt: skip


def identify(
    photo: Photo | None = None,
    *,
    face_id: str | None = None,
    collection: str | None = None,
    top_k: int | None = None,
    prior: float | None = None,
    mode: str | None = None,
    fpir: float | None = None,
) -> Call[m.IdentifyResponse]:
    """``best`` is None when the person is most likely not enrolled (``open_set`` says
    why, and at which false-positive identification rate it was decided)."""
    if (photo is None) == (face_id is None):
        raise ValueError("identify takes a photo or a face_id, not both or neither")
    data = _form(
        face_id=face_id, collection=collection, top_k=top_k, prior=prior, mode=mode, fpir=fpir
    )
    files = [("image", photo_bytes(photo))] if photo is not None else None
    return Call("POST", "/identify", m.IdentifyResponse, data=data, files=files)


def compare(
    photo_a: Photo, photo_b: Photo, *, prior: float | None = None, mode: str | None = None
) -> Call[m.CompareResponse]:
    files = [("image_a", photo_bytes(photo_a)), ("image_b", photo_bytes(photo_b))]
    return Call("POST", "/compare", m.CompareResponse, data=_form(prior=prior, mode=mode),
                files=files)  # fmt: skip


def detect(photo: Photo) -> Call[m.DetectResponse]:
    return Call("POST", "/detect", m.DetectResponse, data={},
                files=[("image", photo_bytes(photo))])  # fmt: skip


def subjects_page(
    *, collection: str | None, offset: int, limit: int, prefix: str | None
) -> Call[m.SubjectPage]:
    params = {"offset": offset, "limit": limit, "prefix": prefix, "collection": collection}
    return Call("GET", "/subjects", m.SubjectPage, params=_clean(params))


def get_subject(subject_id: str, *, collection: str | None = None) -> Call[m.SubjectDetailOut]:
    return Call("GET", f"/subjects/{seg(subject_id)}", m.SubjectDetailOut,
                params=_clean({"collection": collection}))  # fmt: skip


def delete_subject(
    subject_id: str, *, collection: str | None = None
) -> Call[m.DeleteSubjectResponse]:
    return Call("DELETE", f"/subjects/{seg(subject_id)}", m.DeleteSubjectResponse,
                params=_clean({"collection": collection}))  # fmt: skip


def delete_face(
    subject_id: str, face_id: str, *, collection: str | None = None
) -> Call[m.DeleteFaceResponse]:
    return Call("DELETE", f"/subjects/{seg(subject_id)}/faces/{seg(face_id)}",
                m.DeleteFaceResponse, params=_clean({"collection": collection}))  # fmt: skip


def export_subject(
    subject_id: str, *, collection: str | None = None, include_embeddings: bool = False
) -> Call[m.SubjectExport]:
    params = {"collection": collection, "include_embeddings": include_embeddings or None}
    return Call("GET", f"/subjects/{seg(subject_id)}/export", m.SubjectExport,
                params=_clean(params))  # fmt: skip


def collections() -> Call[list[m.CollectionOut]]:
    return Call("GET", "/collections", TypeAdapter(list[m.CollectionOut]))


def create_collection(
    collection_id: str,
    *,
    retention_days: int | None = None,
    consent_required: bool = False,
    identify_fpir: float | None = None,
    verify_max_fmr: float | None = None,
) -> Call[m.CollectionOut]:
    body: dict[str, Any] = {"collection_id": collection_id, "consent_required": consent_required}
    for name, value in (
        ("retention_days", retention_days),
        ("identify_fpir", identify_fpir),
        ("verify_max_fmr", verify_max_fmr),
    ):
        if value is not None:
            body[name] = value
    return Call("POST", "/collections", m.CollectionOut, json=body, retry=False)


def get_collection(collection_id: str) -> Call[m.CollectionOut]:
    return Call("GET", f"/collections/{seg(collection_id)}", m.CollectionOut)


def update_collection(collection_id: str, changes: dict[str, Any]) -> Call[m.CollectionOut]:
    return Call("PATCH", f"/collections/{seg(collection_id)}", m.CollectionOut, json=changes)


def delete_collection(collection_id: str) -> Call[m.DeleteCollectionResponse]:
    return Call("DELETE", f"/collections/{seg(collection_id)}", m.DeleteCollectionResponse)


def keys() -> Call[list[m.KeyOut]]:
    return Call("GET", "/keys", TypeAdapter(list[m.KeyOut]))


def create_key(
    name: str, scopes: Sequence[str], *, collection: str | None = None
) -> Call[m.KeyCreated]:
    body = _clean({"name": name, "scopes": list(scopes), "collection": collection})
    return Call("POST", "/keys", m.KeyCreated, json=body, retry=False)


def revoke_key(key_id: str) -> Call[m.KeyOut]:
    return Call("DELETE", f"/keys/{seg(key_id)}", m.KeyOut)


def info() -> Call[m.InfoResponse]:
    return Call("GET", "/info", m.InfoResponse)


def health() -> Call[m.HealthResponse]:
    return Call("GET", "/healthz", m.HealthResponse)


def ready() -> Call[m.ReadyResponse]:
    return Call("GET", "/readyz", m.ReadyResponse)


def audit(**filters: Any) -> Call[m.AuditPage]:
    return Call("GET", "/audit", m.AuditPage, params=_clean(filters))


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v).lower() if isinstance(v, bool) else v)
            for k, v in params.items() if v is not None}  # fmt: skip
