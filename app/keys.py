"""API keys: random, shown once, stored as a sha256, compared in constant time.

Scopes: ``enroll`` (enroll, delete), ``verify`` (verify, identify, compare), ``admin``
(listing subjects, /info, key management; admin may also do everything else).
Keys come from the database (``faceverify keys create``) or from FACEVERIFY_API_KEYS
(``KEY:SCOPE+SCOPE[@COLLECTION],...``, for containers; held in memory only).

AWS credentials (issue 40, ``faceverify keys create --aws``) are keys of the same table,
scoped and bound alike, used by the Rekognition-compatible API: an access key id and a
secret. Signature Version 4 needs the server to hold the secret itself, so it is stored
sealed with AES-256-GCM (:class:`SecretBox`) under a key that is not in the database:
one derived from FACEVERIFY_ENCRYPTION_KEY when it is set, else the credentials key file
(FACEVERIFY_CREDENTIALS_KEY_FILE, default ``<data dir>/credentials.key``, mode 0600).

Every key is bound to one collection, and sees and changes only that one, except admin
keys made without a collection, which may address any collection and manage them. A key
made without naming a collection is bound to ``default`` unless it is an admin key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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
from app.settings import Settings

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
    # An AWS credential's access key id (None: an API key).
    access_key_id: str | None = None


# AWS-style access key ids: 20 characters, a fixed prefix and base32 (AWS's own start
# with AKIA); secrets: 40 characters, as AWS's.
ACCESS_KEY_PREFIX = "FVAK"
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,32}$")
_NONCE = 12


class SecretBox:
    """Seals the AWS credentials' secrets (AES-256-GCM, the access key id as associated
    data, so a sealed secret copied to another credential does not open). Each sealed
    value starts with the 8-byte id of the key that sealed it; every key given opens."""

    def __init__(self, keys: list[bytes]) -> None:
        self._keys = {_box_id(k): AESGCM(k) for k in keys}
        self._current = _box_id(keys[0]) if keys else None

    @property
    def usable(self) -> bool:
        return self._current is not None

    def knows(self, sealed: bytes) -> bool:
        """Whether one of the keys given sealed ``sealed``."""
        return sealed[:8] in self._keys

    def seal(self, secret: str, access_key_id: str) -> bytes:
        if self._current is None:
            raise ValueError("no credentials key to seal an AWS secret with")
        nonce = os.urandom(_NONCE)
        box = self._keys[self._current]
        return self._current + nonce + box.encrypt(nonce, secret.encode(), access_key_id.encode())

    def open(self, sealed: bytes, access_key_id: str) -> str | None:
        """The secret, or None when no key given opens it (or it was tampered with)."""
        box = self._keys.get(sealed[:8])
        if box is None:
            return None
        nonce, body = sealed[8 : 8 + _NONCE], sealed[8 + _NONCE :]
        try:
            return box.decrypt(nonce, body, access_key_id.encode()).decode()
        except (InvalidTag, UnicodeDecodeError):
            return None


def _box_id(key: bytes) -> bytes:
    return hashlib.sha256(b"faceverify-credentials-key-id:" + key).digest()[:8]


def _derived(key: bytes) -> bytes:
    """A credentials key from an embedding key: never the embedding key itself."""
    return hashlib.sha256(b"faceverify-aws-secrets:" + key).digest()


def credentials_key_file(settings: Settings) -> Path:
    return settings.credentials_key_file or settings.data_dir / "credentials.key"


def secret_box(settings: Settings, *, create: bool = False) -> SecretBox:
    """The keys that seal and open AWS secrets: FACEVERIFY_ENCRYPTION_KEY's (and its old
    keys') derived keys, then the credentials key file's. ``create``: make the file (32
    random bytes, base64, mode 0600) when no key is configured at all."""
    from app.gallery.crypto import parse_key

    keys = []
    if settings.encryption_key.get_secret_value():
        keys.append(_derived(parse_key(settings.encryption_key.get_secret_value(), "key")))
    for old in filter(None, settings.encryption_old_keys.get_secret_value().split(",")):
        keys.append(_derived(parse_key(old, "old key")))
    path = credentials_key_file(settings)
    if not keys and create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    if path.exists():
        try:
            keys.append(base64.b64decode(path.read_text().strip(), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{path} is not base64 of a 32-byte key") from exc
        if len(keys[-1]) != 32:
            raise ValueError(f"{path} is not base64 of a 32-byte key")
    return SecretBox(keys)


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
    def __init__(
        self,
        database: Database,
        env_keys: dict[str, Principal],
        secrets: SecretBox | None = None,
        reload: Callable[[], SecretBox] | None = None,
    ) -> None:
        """``reload``: the credentials keys read again, when a secret sealed with a key
        not known yet is met (``keys create --aws`` made the key file after start-up)."""
        self.database = database
        self.engine = database.engine
        self.env_keys = env_keys
        self.secrets = secrets or SecretBox([])
        self.reload = reload

    def create(
        self, *, name: str, scopes: tuple[str, ...], collection: str | None = None
    ) -> tuple[str, KeyRecord]:
        """A new random key (32 bytes) bound to ``collection`` (see :func:`binding`),
        which is created if it does not exist yet. Returns the key, to show once, and its
        record."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        return self._insert(name=name, scopes=scopes, collection=collection, key=key)

    def _insert(
        self,
        *,
        name: str,
        scopes: tuple[str, ...],
        collection: str | None,
        key: str,
        access_key_id: str | None = None,
        secret_sealed: bytes | None = None,
    ) -> tuple[str, KeyRecord]:
        bound = binding(scopes, collection)
        row = ApiKey(
            id=str(uuid.uuid4()),
            name=name,
            prefix=access_key_id[:10] if access_key_id else key[:10],
            key_sha256=digest(key),
            scopes="+".join(scopes),
            collection_id=bound,
            created_at=datetime.now(UTC),
            access_key_id=access_key_id,
            secret_sealed=secret_sealed,
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
            detail = {"new_key_id": row.id, "scopes": row.scopes}
            if access_key_id:
                detail["access_key_id"] = access_key_id  # never the secret
            event.about(collection=bound, subjects=[], detail=detail)
            record = _record(row)
        return key, record

    def create_aws(
        self, *, name: str, scopes: tuple[str, ...], collection: str | None = None
    ) -> tuple[str, str, KeyRecord]:
        """A new AWS credential (access key id, secret) bound and scoped as :meth:`create`'s
        keys are; the secret is stored sealed (:class:`SecretBox`) and shown once."""
        access_key_id = ACCESS_KEY_PREFIX + "".join(secrets.choice(_BASE32) for _ in range(16))
        secret = base64.b64encode(secrets.token_bytes(30)).decode()
        sealed = self.secrets.seal(secret, access_key_id)
        # The sha256 column is the hash of a random value nobody is shown: an AWS
        # credential cannot be used as an X-API-Key.
        _, record = self._insert(
            name=name,
            scopes=scopes,
            collection=collection,
            key=KEY_PREFIX + secrets.token_urlsafe(32),
            access_key_id=access_key_id,
            secret_sealed=sealed,
        )
        return access_key_id, secret, record

    def aws_credential(self, access_key_id: str) -> tuple[str, Principal] | None:
        """The secret and what the credential may do, or None when it is unknown, revoked
        or cannot be opened with the keys given. Looked up on every request."""
        if not ACCESS_KEY_ID.match(access_key_id):
            return None
        with Session(self.engine) as session:
            row = session.scalar(select(ApiKey).where(ApiKey.access_key_id == access_key_id))
        if row is None or row.revoked_at is not None or row.secret_sealed is None:
            return None
        secret = self.secrets.open(row.secret_sealed, access_key_id)
        if secret is None and self.reload is not None and not self.secrets.knows(row.secret_sealed):
            self.secrets = self.reload()
            secret = self.secrets.open(row.secret_sealed, access_key_id)
        if secret is None:
            return None
        return secret, Principal(parse_scopes(row.scopes), row.collection_id, key_id=row.id)

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
        access_key_id=row.access_key_id,
    )
