"""What several routers share: OpenAPI helpers and record -> schema conversions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.api import admin_schemas as a
from app.api import schemas as s
from app.api.problems import PROBLEM_JSON, Problem
from app.face.views import recipe_of
from app.gallery import CollectionRecord, FaceRecord, SubjectRecord


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problem+json answers a route may give."""
    return {
        status: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": "Problem"}
        for status in statuses
    }


def request_body(
    model: type[BaseModel], images: dict[str, bool], *, images_required: bool = True
) -> dict[str, Any]:
    """OpenAPI for a body sent as multipart (files) or JSON (base64), same field names.
    ``images`` maps each image field to whether it may repeat."""
    fields = model.model_json_schema()
    props: dict[str, Any] = fields.get("properties", {})
    multipart_props = {**props}
    json_props = {**props}
    for name, many in images.items():
        binary = {"type": "string", "format": "binary"}
        b64 = {"type": "string", "contentEncoding": "base64"}
        multipart_props[name] = {"type": "array", "items": binary} if many else binary
        json_props[name] = b64
        if many:
            json_props[name + "s"] = {"type": "array", "items": b64}
    required = list(fields.get("required", []))
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": multipart_props,
                        "required": required + (list(images) if images_required else []),
                    }
                },
                "application/json": {
                    "schema": {"type": "object", "properties": json_props, "required": required}
                },
            },
        }
    }


def face_out(face: FaceRecord) -> s.FaceOut:
    return s.FaceOut(
        face_id=face.id,
        box=face.box,
        detector_score=round(face.detector_score, 4),
        encoder=face.encoder,
        pipeline_version=face.pipeline_version,
        template=recipe_of(face.pipeline_version),
        created_at=s.as_utc(face.created_at),
    )


def subject_out(subject: SubjectRecord) -> s.SubjectOut:
    return s.SubjectOut(
        subject_id=subject.id,
        name=subject.name,
        metadata=subject.metadata,
        created_at=s.as_utc(subject.created_at),
        face_count=subject.face_count,
        last_used_at=s.as_utc(subject.last_used_at) if subject.last_used_at else None,
        expires_at=s.as_utc(subject.expires_at) if subject.expires_at else None,
        consent=subject.consent,
    )


def collection_out(record: CollectionRecord, default_fpir: float | None = None) -> a.CollectionOut:
    """The collection as the API shows it; with ``default_fpir`` (the server's) an
    ``identify_fpir`` the collection leaves unset is shown as the one in force."""
    return a.CollectionOut(
        collection_id=record.id,
        created_at=s.as_utc(record.created_at),
        subjects=record.subjects,
        faces=record.faces,
        retention_days=record.retention_days,
        consent_required=record.consent_required,
        identify_fpir=default_fpir if record.identify_fpir is None else record.identify_fpir,
        verify_max_fmr=record.verify_max_fmr,
    )
