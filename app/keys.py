"""API keys: random, shown once, stored as a sha256, compared in constant time.

Scopes: ``enroll`` (enroll, delete), ``verify`` (verify, identify, compare), ``admin``
(listing subjects, /info, key management; admin may also do everything else).
Keys come from the database (``faceverify keys create``) or from FACEVERIFY_API_KEYS
(``KEY:SCOPE+SCOPE,...``, for containers; held in memory only).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.errors import Forbidden, Unauthorized
from app.gallery.models import ApiKey

SCOPES = ("enroll", "verify", "admin")
KEY_PREFIX = "fv_"
# Keys from the environment are chosen by people: refuse short ones.
MIN_ENV_KEY_LENGTH = 16


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    source: str = "database"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(sorted({s.strip() for s in text.replace(",", "+").split("+") if s.strip()}))
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ValueError(f"scopes must be some of {'+'.join(SCOPES)}, got {text!r}")
    return scopes


def parse_env_keys(text: str) -> dict[str, tuple[str, ...]]:
    """FACEVERIFY_API_KEYS: comma-separated ``KEY:SCOPE+SCOPE`` entries -> {sha256: scopes}."""
    keys: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        key, sep, scopes = entry.rpartition(":")
        if not sep or not key:
            raise ValueError("FACEVERIFY_API_KEYS entries look like KEY:enroll+verify")
        if len(key) < MIN_ENV_KEY_LENGTH:
            raise ValueError(
                f"FACEVERIFY_API_KEYS: a key must be at least {MIN_ENV_KEY_LENGTH} characters"
            )
        keys[digest(key)] = parse_scopes(scopes)
    return keys


class KeyStore:
    def __init__(self, engine: Engine, env_keys: dict[str, tuple[str, ...]]) -> None:
        self.engine = engine
        self.env_keys = env_keys

    def create(self, *, name: str, scopes: tuple[str, ...]) -> tuple[str, KeyRecord]:
        """A new random key (32 bytes). Returns the key, to show once, and its record."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id=str(uuid.uuid4()),
            name=name,
            prefix=key[:10],
            key_sha256=digest(key),
            scopes="+".join(scopes),
            created_at=datetime.now(UTC),
        )
        with Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()
            return key, _record(row)

    def list(self) -> list[KeyRecord]:
        with Session(self.engine) as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at)).all()
            return [_record(r) for r in rows]

    def revoke(self, *, key_id: str) -> bool:
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def active_count(self) -> int:
        return len(self.env_keys) + sum(1 for k in self.list() if k.revoked_at is None)

    def scopes_for(self, key: str) -> tuple[str, ...] | None:
        """The key's scopes, or None if it is unknown or revoked. Looked up on every
        request, so a revocation takes effect at once, on every replica."""
        wanted = digest(key)
        for known, scopes in self.env_keys.items():
            if hmac.compare_digest(known, wanted):
                return scopes
        with Session(self.engine) as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == wanted))
        if row is None or row.revoked_at is not None:
            return None
        # The index found the row by its hash; compare again in constant time anyway.
        return parse_scopes(row.scopes) if hmac.compare_digest(row.key_sha256, wanted) else None

    def authorize(self, key: str | None, scope: str | None) -> tuple[str, ...]:
        """The key's scopes if it may call an endpoint needing ``scope`` (None: any valid
        key); else Unauthorized (401) or Forbidden (403)."""
        if not key:
            raise Unauthorized("Send an API key in X-API-Key or Authorization: Bearer.")
        scopes = self.scopes_for(key)
        if scopes is None:
            raise Unauthorized("The API key is unknown or revoked.")
        if scope is not None and scope not in scopes and "admin" not in scopes:
            raise Forbidden(
                f"This API key lacks the {scope!r} scope this endpoint needs.",
                required_scope=scope,
            )
        return scopes


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        scopes=parse_scopes(row.scopes),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
