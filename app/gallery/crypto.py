"""Embeddings encrypted at rest (issue 27, opt-in): AES-256-GCM from ``cryptography``.

With FACEVERIFY_ENCRYPTION_KEY (or _KEY_FILE) set, every embedding is written as
``nonce (12 bytes) || ciphertext || tag (16 bytes)``, its face id as associated data
(a sealed embedding moved to another row does not open), and the row records the key's
id (the first 16 hex digits of a sha256 of the key, never the key). Rows of older keys
(FACEVERIFY_ENCRYPTION_OLD_KEYS) and rows written before encryption (key_id NULL) stay
readable; ``faceverify encryption rotate`` rewrites every row with the current key.

The in-memory index holds embeddings decrypted: encryption protects the database file,
its backups and replicas, not a process's memory. pgvector searches plaintext vectors
inside PostgreSQL, so the two cannot be combined (build_service refuses).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


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

    def seal(self, plain: bytes, face_id: str) -> tuple[bytes, str]:
        """The stored form of an embedding, and the key id to store beside it."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.current].encrypt(nonce, plain, face_id.encode())
        return nonce + sealed, self.current

    def open(self, stored: bytes, face_id: str, kid: str) -> bytes:
        aes = self._keys.get(kid)
        if aes is None:
            raise EncryptionKeyError(
                f"face {face_id} is encrypted with key {kid}, which is not configured "
                "(FACEVERIFY_ENCRYPTION_OLD_KEYS)"
            )
        try:
            return aes.decrypt(stored[:NONCE_BYTES], stored[NONCE_BYTES:], face_id.encode())
        except InvalidTag as exc:
            raise EncryptionKeyError(f"face {face_id}'s embedding does not decrypt") from exc


def cipher_from(key: str, key_file: Path | None, old_keys: str) -> EmbeddingCipher | None:
    """The cipher the settings ask for; None when encryption is off."""
    if key_file is not None:
        key = key_file.read_text()
    if not key.strip():
        return None
    old = [parse_key(k, "FACEVERIFY_ENCRYPTION_OLD_KEYS") for k in old_keys.split(",") if k.strip()]
    return EmbeddingCipher(parse_key(key, "the encryption key"), old)


def plain(cipher: EmbeddingCipher | None, stored: bytes, face_id: str, kid: str | None) -> bytes:
    """A stored embedding's plain bytes (rows with no key id were written plain)."""
    if kid is None:
        return stored
    if cipher is None:
        raise EncryptionKeyError(
            f"face {face_id} is encrypted, and no FACEVERIFY_ENCRYPTION_KEY is set"
        )
    return cipher.open(stored, face_id, kid)
