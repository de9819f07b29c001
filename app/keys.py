"""API keys: random, shown once, stored as a sha256, compared in constant time.

Scopes: ``enroll`` (enroll, delete), ``verify`` (verify, identify, compare), ``admin``
(listing subjects, /info, key management; admin may also do everything else).
Keys come from the database (``faceverify keys create``) or from FACEVERIFY_API_KEYS
(``KEY:SCOPE+SCOPE[@COLLECTION],...``, for containers; held in memory only).

Every key is bound to one collection, and sees and changes only that one, except admin
keys made without a collection, which may address any collection and manage them. A key
made without naming a collection is bound to ``default`` unless it is an admin key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from app.errors import Forbidden, Unauthorized
from app.gallery import Database, Sealing
from app.gallery.models import (
    COLLECTION_ID_PATTERN,
    DEFAULT_COLLECTION,
    ApiKey,
    Collection,
    DeletedCollection,
    RevokedEnvKey,
)
from app.gallery.unit import transaction
from app.privacy import events

SCOPES = ("enroll", "verify", "admin")
KEY_PREFIX = "fv_"
COLLECTION_ID = re.compile(COLLECTION_ID_PATTERN)
_REVOKED = select(RevokedEnvKey.key_sha256).where(RevokedEnvKey.key_sha256 == bindparam("hashed"))
# Keys from the environment are chosen by people: refuse short ones.
MIN_ENV_KEY_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    """What a request's key may do: its scopes, and the collection it is bound to (None:
    an admin key for every collection)."""

    scopes: tuple[str, ...]
    collection: str | None
    # The key's id: its record's for a database key, ``env-`` and the start of its
    # sha256 for one from the environment. Requests are shared fairly between these.
    key_id: str = ""

    @property
    def unbound_admin(self) -> bool:
        return "admin" in self.scopes and self.collection is None


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    collection: str | None = None
    source: str = "database"


def binding(scopes: tuple[str, ...], collection: str | None) -> str | None:
    """The collection a key with ``scopes`` is bound to when ``collection`` is asked for:
    only admin keys may be unbound; other keys default to the default collection."""
    if collection is None and "admin" not in scopes:
        return DEFAULT_COLLECTION
    return collection


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(sorted({s.strip() for s in text.replace(",", "+").split("+") if s.strip()}))
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ValueError(f"scopes must be some of {'+'.join(SCOPES)}, got {text!r}")
    return scopes


def parse_env_keys(text: str) -> dict[str, Principal]:
    """FACEVERIFY_API_KEYS: comma-separated ``KEY:SCOPE+SCOPE[@COLLECTION]`` entries ->
    {sha256: Principal}."""
    keys: dict[str, Principal] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        key, sep, rest = entry.rpartition(":")
        if not sep or not key:
            raise ValueError("FACEVERIFY_API_KEYS entries look like KEY:enroll+verify[@door]")
        if len(key) < MIN_ENV_KEY_LENGTH:
            raise ValueError(
                f"FACEVERIFY_API_KEYS: a key must be at least {MIN_ENV_KEY_LENGTH} characters"
            )
        scope_text, at, collection = rest.partition("@")
        if at and not COLLECTION_ID.match(collection):
            raise ValueError(f"FACEVERIFY_API_KEYS: {collection!r} is not a collection id")
        scopes = parse_scopes(scope_text)
        hashed = digest(key)
        keys[hashed] = Principal(
            scopes, binding(scopes, collection or None), key_id=f"env-{hashed[:12]}"
        )
    return keys


class KeyStore:
    def __init__(self, database: Database, env_keys: dict[str, Principal]) -> None:
        self.database = database
        self.engine = database.engine
        self.env_keys = env_keys

    def create(
        self, *, name: str, scopes: tuple[str, ...], collection: str | None = None
    ) -> tuple[str, KeyRecord]:
        """A new random key (32 bytes) bound to ``collection`` (see :func:`binding`),
        which is created if it does not exist yet. Returns the key, to show once, and its
        record."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        bound = binding(scopes, collection)
        row = ApiKey(
            id=str(uuid.uuid4()),
            name=name,
            prefix=key[:10],
            key_sha256=digest(key),
            scopes="+".join(scopes),
            collection_id=bound,
            created_at=datetime.now(UTC),
        )
        event = events.entry()
        with transaction(self.database, Sealing(), None, audit=event, versioned=False) as tx:
            session = tx.session
            if bound is not None and session.get(Collection, bound) is None:
                # An admin asking for a key of a deleted collection creates it again.
                session.add(Collection(id=bound, created_at=datetime.now(UTC)))
                session.execute(delete(DeletedCollection).where(DeletedCollection.id == bound))
            session.add(row)
            session.flush()
            event.about(
                collection=bound, subjects=[], detail={"new_key_id": row.id, "scopes": row.scopes}
            )
            record = _record(row)
        return key, record

    def list(self) -> list[KeyRecord]:
        with Session(self.engine) as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
            return [_record(r) for r in rows]

    def revoke(self, *, key_id: str) -> bool:
        event = events.entry()
        with transaction(self.database, Sealing(), None, versioned=False) as tx:
            result = tx.session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            revoked = bool(result.rowcount)  # type: ignore[attr-defined]
            if revoked:  # only a revocation is an event of its own
                event.about(collection=None, subjects=[], detail={"revoked_key_id": key_id})
                tx.join(event)
        return revoked

    def env_key_revoked(self, hashed: str) -> bool:
        # On every request with an environment key: a Core query, not the ORM's
        # Session.get (which cost a flood's requests as much CPU as a verify).
        with self.engine.connect() as conn:
            found = conn.execute(_REVOKED, {"hashed": hashed}).first()
        return found is not None

    def env_keys_bound_to(self, collection: str) -> tuple[str, ...]:
        """The sha256 of the FACEVERIFY_API_KEYS keys bound to ``collection``."""
        return tuple(sorted(h for h, p in self.env_keys.items() if p.collection == collection))

    def usable_env_keys(self) -> dict[str, Principal]:
        """The environment's keys that were not revoked with their collection."""
        return {h: p for h, p in self.env_keys.items() if not self.env_key_revoked(h)}

    def active_count(self) -> int:
        return len(self.usable_env_keys()) + sum(1 for k in self.list() if k.revoked_at is None)

    def principal_for(self, key: str) -> Principal | None:
        """What the key may do, or None if it is unknown or revoked. Looked up on every
        request, so a revocation takes effect at once, on every replica."""
        wanted = digest(key)
        for known, principal in self.env_keys.items():
            if hmac.compare_digest(known, wanted):
                # Revoked with its collection (issue 25: it kept working, and reached a
                # new tenant's collection of the same name once an admin made one).
                return None if self.env_key_revoked(known) else principal
        with Session(self.engine) as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == wanted))
        if row is None or row.revoked_at is not None:
            return None
        # The index found the row by its hash; compare again in constant time anyway.
        if not hmac.compare_digest(row.key_sha256, wanted):
            return None
        return Principal(parse_scopes(row.scopes), row.collection_id, key_id=row.id)

    def authorize(self, key: str | None, scope: str | None, *, unbound: bool = False) -> Principal:
        """What the key may do, if it may call an endpoint needing ``scope`` (None: any
        valid key; ``unbound``: an admin key for every collection); else Unauthorized
        (401) or Forbidden (403)."""
        if not key:
            raise Unauthorized("Send an API key in X-API-Key or Authorization: Bearer.")
        principal = self.principal_for(key)
        if principal is None:
            raise Unauthorized("The API key is unknown or revoked.")
        scopes = principal.scopes
        if scope is not None and scope not in scopes and "admin" not in scopes:
            raise Forbidden(
                f"This API key lacks the {scope!r} scope this endpoint needs.",
                required_scope=scope,
            )
        if unbound and not principal.unbound_admin:
            raise Forbidden(
                "This endpoint needs an admin key that is not bound to a collection.",
                required_scope="admin",
            )
        return principal


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=parse_scopes(row.scopes),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        collection=row.collection_id,
    )
