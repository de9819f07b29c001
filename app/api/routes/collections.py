"""/collections: separate galleries, each with its own subjects and keys (admin keys of
every collection only)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import admin_schemas as a
from app.api import schemas as s
from app.api.audit import audited, not_audited
from app.api.deps import BodyDep, KeysDep, ServiceDep, SettingsDep, require
from app.api.routes.common import collection_out, problems

router = APIRouter(tags=["collections"], dependencies=[require("admin", unbound=True)])


@router.get("/collections", response_model=list[a.CollectionOut], responses=problems(401, 403))
@not_audited("lists collection names and counts, no subject")
def list_collections(service: ServiceDep, settings: SettingsDep) -> list[a.CollectionOut]:
    """Every collection, with its subject and face counts."""
    return [collection_out(c, settings.identify_fpir) for c in service.list_collections()]


@router.post(
    "/collections",
    status_code=201,
    response_model=a.CollectionOut,
    responses=problems(401, 403, 409, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": a.CollectionCreateRequest.model_json_schema()}
            },
        }
    },
)
@audited("create_collection", 201)
def create_collection(raw: BodyDep, service: ServiceDep, settings: SettingsDep) -> a.CollectionOut:
    """Create an empty collection (then: POST /keys with it, and enroll with those keys)."""
    body = raw.validate(a.CollectionCreateRequest)
    return collection_out(
        service.create_collection(
            collection=body.collection_id,
            retention_days=body.retention_days,
            consent_required=body.consent_required,
            identify_fpir=body.identify_fpir,
            verify_max_fmr=body.verify_max_fmr,
        ),
        settings.identify_fpir,
    )


@router.patch(
    "/collections/{collection_id}",
    response_model=a.CollectionOut,
    responses=problems(401, 403, 404, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": a.CollectionUpdateRequest.model_json_schema()}
            },
        }
    },
)
@audited("update_collection")
def update_collection(
    collection_id: s.CollectionId, raw: BodyDep, service: ServiceDep, settings: SettingsDep
) -> a.CollectionOut:
    """Set a collection's retention schedule (retention_days; null: none), consent
    rule (consent_required) and decision rates (identify_fpir, verify_max_fmr; null:
    the server's defaults). Subjects already past a new schedule are deleted at the
    next purge, and never match from now on."""
    body = raw.validate(a.CollectionUpdateRequest)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("consent_required", False) is None:
        del changes["consent_required"]
    return collection_out(
        service.update_collection(collection=collection_id, changes=changes),
        settings.identify_fpir,
    )


@router.get(
    "/collections/{collection_id}",
    response_model=a.CollectionOut,
    responses=problems(401, 403, 404, 422),
)
@not_audited("a collection's settings and counts, no subject")
def get_collection(
    collection_id: s.CollectionId, service: ServiceDep, settings: SettingsDep
) -> a.CollectionOut:
    """One collection with its subject and face counts."""
    return collection_out(service.get_collection(collection=collection_id), settings.identify_fpir)


@router.delete(
    "/collections/{collection_id}",
    response_model=a.DeleteCollectionResponse,
    responses=problems(401, 403, 404, 409, 422),
)
@audited("delete_collection")
def delete_collection(
    collection_id: s.CollectionId, service: ServiceDep, settings: SettingsDep, keys: KeysDep
) -> a.DeleteCollectionResponse:
    """Delete a collection: every subject and embedding of it, from the database and
    every process's index, and revoke the keys bound to it (those from
    FACEVERIFY_API_KEYS too, for good), before answering."""
    record = service.delete_collection(
        collection=collection_id, env_key_hashes=keys.env_keys_bound_to(collection_id)
    )
    return a.DeleteCollectionResponse(
        **collection_out(record, settings.identify_fpir).model_dump(),
        deleted=True,
        keys_revoked=True,
    )
