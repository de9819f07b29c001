"""/keys: API keys (admin keys of every collection only). Keys are stored as hashes; a new
key is shown once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api import schemas as s
from app.api.audit import audited, not_audited
from app.api.deps import BodyDep, KeysDep, require
from app.api.routes.common import problems
from app.errors import KeyNotFound
from app.keys import KeyRecord

router = APIRouter(tags=["keys"], dependencies=[require("admin", unbound=True)])


@router.get("/keys", response_model=list[s.KeyOut], responses=problems(401, 403))
@not_audited("API keys, no biometric data")
def list_keys(keys: KeysDep) -> list[s.KeyOut]:
    """API keys in the database (names, prefixes, scopes; never the keys)."""
    return [key_out(k) for k in keys.list()]


@router.post(
    "/keys",
    status_code=201,
    response_model=s.KeyCreated,
    responses=problems(401, 403, 413, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": s.KeyCreateRequest.model_json_schema()}},
        }
    },
)
@audited("create_key", 201)
def create_key(raw: BodyDep, keys: KeysDep) -> s.KeyCreated:
    """Create an API key. The key is in this response only: it is stored as a hash."""
    # Read through BodyDep, not a body parameter: the key is checked before the body.
    body = raw.validate(s.KeyCreateRequest)
    key, record = keys.create(name=body.name, scopes=tuple(body.scopes), collection=body.collection)
    return s.KeyCreated(**key_out(record).model_dump(), key=key)


@router.delete("/keys/{key_id}", response_model=s.KeyOut, responses=problems(401, 403, 404, 422))
@audited("revoke_key")
def revoke_key(key_id: Annotated[str, Path(max_length=64)], keys: KeysDep) -> s.KeyOut:
    """Revoke an API key; it stops working at once, on every replica."""
    if not keys.revoke(key_id=key_id):
        raise KeyNotFound(f"No active API key with id {key_id!r}.", key_id=key_id)
    return next(key_out(k) for k in keys.list() if k.id == key_id)


def key_out(record: KeyRecord) -> s.KeyOut:
    return s.KeyOut(
        key_id=record.id,
        name=record.name,
        prefix=record.prefix,
        scopes=list(record.scopes),
        collection=record.collection,
        created_at=s.as_utc(record.created_at),
        revoked_at=s.as_utc(record.revoked_at) if record.revoked_at else None,
    )
