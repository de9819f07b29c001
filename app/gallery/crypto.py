"""Embeddings encrypted at rest (issue 27, opt-in): AES-256-GCM from ``cryptography``.

With FACEVERIFY_ENCRYPTION_KEY (or _KEY_FILE) set, every embedding is written as
``0x02 || nonce (12 bytes) || ciphertext || tag (16 bytes)``, its face id, collection
and subject as associated data (a sealed embedding moved to another row, or its row
moved to another subject, does not open: issue 37), and the row records the key's id
(the first 16 hex digits of a sha256 of the key, never the key). Rows sealed before
issue 37 (no leading byte, the face id alone as associated data: their length is a
multiple of 4, the new form's is not) stay readable until ``encryption rotate`` reseals
them; once a gallery is wholly sealed in the new form (gallery_state.sealed) they, and
plain rows, are refused. Rows of older keys
(FACEVERIFY_ENCRYPTION_OLD_KEYS) and rows written before encryption (key_id NULL) stay
readable; ``faceverify encryption rotate`` rewrites every row with the current key.

The in-memory index holds embeddings decrypted: encryption protects the database file,
its backups and replicas, not a process's memory. A vector search inside the database
(app/vectors) sees plaintext vectors, so the two cannot be combined (build_service
refuses).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("faceverify.gallery")

NONCE_BYTES = 12
# The first byte of an embedding sealed in the current form (face, collection and subject
# as associated data). The older form has none: 12 + 4·dim + 16 bytes, a multiple of 4.
FORM = b"\x02"


class EncryptionKeyError(ValueError):
    """A key that is not base64 of 32 bytes, or a row sealed with a key not given."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"faceverify-embedding-key:" + key).hexdigest()[:16]


def parse_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EncryptionKeyError(f"{where} is not base64") from exc
    if len(key) != 32:
        raise EncryptionKeyError(f"{where} must be 32 bytes (base64 of 32 random bytes)")
    return key


def new_key() -> str:
    """A fresh key, as base64 (``faceverify encryption new-key``)."""
    return base64.b64encode(os.urandom(32)).decode()


class EmbeddingCipher:
    def __init__(self, current: bytes, old: list[bytes] | None = None) -> None:
        self._keys = {key_id(k): AESGCM(k) for k in [*(old or []), current]}
        self.current = key_id(current)

    @property
    def key_ids(self) -> frozenset[str]:
        """The ids of every key given (current and old)."""
        return frozenset(self._keys)

    def seal(self, plain: bytes, owner: Owner) -> tuple[bytes, str]:
        """The stored form of an embedding, and the key id to store beside it."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.current].encrypt(nonce, plain, associated(owner))
        return FORM + nonce + sealed, self.current

    def open_many(self, rows: Iterable[Sequence[Any]]) -> list[bytes | None]:
        """Each (face, collection, subject, stored, key id) row's plain embedding, or None
        where this quick path does not open it (another form, no key of that id, or no
        tag match): the caller opens those one by one, with their errors and policy. One
        loop calling nothing but AES: loading 1M sealed faces spent 4.5 s in the
        per-row calls around 1 s of decryption (issue 41)."""
        keys, head = self._keys, 1 + NONCE_BYTES
        opened: list[bytes | None] = []
        for face_id, collection, subject, stored, kid in rows:
            aes = keys.get(kid)
            if aes is None or len(stored) % 4 != 1 or stored[:1] != FORM:
                opened.append(None)
                continue
            aad = ASSOCIATED + f"{face_id}\0{collection}\0{subject}".encode()
            try:
                opened.append(aes.decrypt(stored[1:head], stored[head:], aad))
            except (InvalidTag, ValueError):  # ValueError: too short to hold a nonce
                opened.append(None)
        return opened

    def open(self, stored: bytes, owner: Owner, kid: str, *, legacy: bool = True) -> bytes:
        """``legacy``: whether the older form (face id alone as associated data) is
        still accepted (until the gallery is wholly resealed)."""
        face_id = owner[0]
        aes = self._keys.get(kid)
        if aes is None:
            raise EncryptionKeyError(
                f"face {face_id} is encrypted with key {kid}, which is not configured "
                "(FACEVERIFY_ENCRYPTION_OLD_KEYS)"
            )
        if is_current_form(stored):
            nonce, body, aad = (
                stored[1 : 1 + NONCE_BYTES],
                stored[1 + NONCE_BYTES :],
                associated(owner),
            )
        elif legacy:
            nonce, body, aad = stored[:NONCE_BYTES], stored[NONCE_BYTES:], face_id.encode()
        else:
            raise EncryptionKeyError(
                f"face {face_id} is sealed in the pre-0.5 form in a gallery resealed since"
            )
        try:
            return aes.decrypt(nonce, body, aad)
        except (InvalidTag, ValueError) as exc:  # ValueError: cut short before its tag
            raise EncryptionKeyError(
                f"face {face_id}'s embedding does not decrypt (another key, or the row was "
                "changed or moved to another face, subject or collection)"
            ) from exc


# Who a stored embedding belongs to: (face id, collection id, subject id).
Owner = tuple[str, str, str]


ASSOCIATED = b"faceverify-embedding/2\0"


def associated(owner: Owner) -> bytes:
    """The associated data an embedding is sealed with: its face, collection and subject
    (NUL never occurs in an id)."""
    return ASSOCIATED + "\0".join(owner).encode()


def is_current_form(stored: bytes) -> bool:
    return len(stored) % 4 == 1 and stored[:1] == FORM


def cipher_from(key: str, key_file: Path | None, old_keys: str) -> EmbeddingCipher | None:
    """The cipher the settings ask for; None when encryption is off."""
    if key_file is not None:
        key = key_file.read_text()
    if not key.strip():
        return None
    old = [parse_key(k, "FACEVERIFY_ENCRYPTION_OLD_KEYS") for k in old_keys.split(",") if k.strip()]
    return EmbeddingCipher(parse_key(key, "the encryption key"), old)


@dataclass(frozen=True)
class SealPolicy:
    """What a gallery's rows must be to be used (app/gallery/sealing.py decides at start).

    refuse_plain: a key is set and the gallery has been sealed with one (its key ids are
        recorded): every write since seals, so a plaintext row was not written by
        faceverify (issue 37: a forged plain row matched).
    refuse_legacy: every row was resealed in the current form (encryption rotate): a row
        of the older form (face id alone as associated data) is a copy from before.
    """

    refuse_plain: bool = False
    refuse_legacy: bool = False
    # The gallery has been sealed with a key (its key ids are recorded).
    keyed: bool = False


OPEN = SealPolicy()


def plain(
    cipher: EmbeddingCipher | None,
    stored: bytes,
    owner: Owner,
    kid: str | None,
    *,
    policy: SealPolicy = OPEN,
) -> bytes:
    """A stored embedding's plain bytes (rows with no key id were written plain), as
    ``policy`` allows; else EncryptionKeyError."""
    if kid is None:
        if policy.refuse_plain:
            raise EncryptionKeyError(
                f"face {owner[0]} is stored in plaintext in a gallery sealed with a key: it "
                "was not written by faceverify"
            )
        return stored
    if cipher is None:
        raise EncryptionKeyError(
            f"face {owner[0]} is encrypted, and no FACEVERIFY_ENCRYPTION_KEY is set"
        )
    return cipher.open(stored, owner, kid, legacy=not policy.refuse_legacy)


def readable(
    cipher: EmbeddingCipher | None,
    stored: bytes,
    owner: Owner,
    kid: str | None,
    *,
    policy: SealPolicy = OPEN,
) -> bytes | None:
    """:func:`plain`, or None (logged) for a row that does not open: a row changed,
    moved to another subject or collection, or slipped in as plaintext is left out of
    every search and answer instead of failing them all (issue 37)."""
    try:
        return plain(cipher, stored, owner, kid, policy=policy)
    except EncryptionKeyError as exc:
        log.error("a stored embedding is left out: %s", exc)
        return None


@dataclass
class Sealing:
    """A gallery's key (None: embeddings stored plain) and which rows it refuses: what
    every read opens with and every write seals with."""

    cipher: EmbeddingCipher | None = None
    policy: SealPolicy = OPEN

    def seal(self, data: bytes, owner: Owner) -> tuple[bytes, str | None]:
        """The stored form of ``data`` and its key id (None: plain)."""
        if self.cipher is None:
            return data, None
        return self.cipher.seal(data, owner)

    def open(self, stored: bytes, owner: Owner, kid: str | None) -> bytes | None:
        """:func:`readable` under this gallery's key and policy."""
        return readable(self.cipher, stored, owner, kid, policy=self.policy)

    def open_rows(self, rows: Sequence[Sequence[Any]]) -> list[bytes | None]:
        """:meth:`open` of each (face, collection, subject, stored, key id) row: the
        sealed rows of the current form in one quick pass, the others one by one."""
        quick = self.cipher.open_many(rows) if self.cipher is not None else [None] * len(rows)
        return [
            data if data is not None else self.open(r[3], (r[0], r[1], r[2]), r[4])
            for r, data in zip(rows, quick, strict=True)
        ]
