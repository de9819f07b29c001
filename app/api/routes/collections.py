"""/collections: separate galleries, each with its own subjects and keys (admin keys of
every collection only)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import schemas as s
from app.api.deps import BodyDep, KeysDep, ServiceDep, require
from app.api.routes.common import problems
from app.gallery.store import CollectionRecord

router = APIRouter(tags=["collections"], dependencies=[require("admin", unbound=True)])


@router.get("/collections", response_model=list[s.CollectionOut], responses=problems(401, 403))
def list_collections(service: ServiceDep) -> list[s.CollectionOut]:
    """Every collection, with its subject and face counts."""
    return [collection_out(c) for c in service.list_collections()]


@router.post(
    "/collections",
    status_code=201,
    response_model=s.CollectionOut,
    responses=problems(401, 403, 409, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": s.CollectionCreateRequest.model_json_schema()}
            },
        }
    },
)
def create_collection(raw: BodyDep, service: ServiceDep) -> s.CollectionOut:
    """Create an empty collection (then: POST /keys with it, and enroll with those keys)."""
    body = raw.validate(s.CollectionCreateRequest)
    return collection_out(service.create_collection(collection=body.collection_id))


@router.get(
    "/collections/{collection_id}",
    response_model=s.CollectionOut,
    responses=problems(401, 403, 404, 422),
)
def get_collection(collection_id: s.CollectionId, service: ServiceDep) -> s.CollectionOut:
    """One collection with its subject and face counts."""
    return collection_out(service.get_collection(collection=collection_id))


@router.delete(
    "/collections/{collection_id}",
    response_model=s.DeleteCollectionResponse,
    responses=problems(401, 403, 404, 409, 422),
)
def delete_collection(
    collection_id: s.CollectionId, service: ServiceDep, keys: KeysDep
) -> s.DeleteCollectionResponse:
    """Delete a collection: every subject and embedding of it, from the database and
    every process's index, and revoke the keys bound to it (those from
    FACEVERIFY_API_KEYS too, for good), before answering."""
    record = service.delete_collection(
        collection=collection_id, env_key_hashes=keys.env_keys_bound_to(collection_id)
    )
    return s.DeleteCollectionResponse(
        **collection_out(record).model_dump(), deleted=True, keys_revoked=True
    )


def collection_out(record: CollectionRecord) -> s.CollectionOut:
    return s.CollectionOut(
        collection_id=record.id,
        created_at=s.as_utc(record.created_at),
        subjects=record.subjects,
        faces=record.faces,
    )
