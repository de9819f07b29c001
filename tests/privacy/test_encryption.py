"""Embeddings encrypted at rest (issue 27, opt-in): what is stored is not the embedding,
answers do not change, keys rotate, and pgvector is refused with a clear message."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.api.app import create_app
from app.errors import NotReady
from app.gallery.crypto import EmbeddingCipher, EncryptionKeyError, key_id
from app.service.build import open_store
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import AUTH, TEST_KEY
from tests.helpers import fake_service as make_fake_service
from tests.privacy.test_erasure import files_holding


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def run_app(settings: Settings):
    return TestClient(
        create_app(settings, builder=lambda s: (make_fake_service(s), {})), headers=AUTH
    )


def test_embeddings_are_stored_encrypted_and_answers_do_not_change(tmp_path: Path) -> None:
    key = new_key()
    settings = Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin", encryption_key=key)
    ann = fake_image(face(1))
    with run_app(settings) as client:
        r = client.post("/enroll", data={"subject_id": "ann"}, files={"image": ann})
        assert r.status_code == 201
        verified = client.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
        assert verified.json()["match"] is True and verified.json()["distance"] == 0.0
        ident = client.post("/identify", files={"image": ann}).json()
        assert ident["best"]["subject_id"] == "ann"
        store = client.app.state.service.store  # type: ignore[attr-defined]
        plain = next(
            iter(store.subject_face_bytes(collection="default", subject_id="ann").values())
        )
        with store.engine.connect() as conn:
            stored, kid = conn.execute(text("SELECT embedding, key_id FROM faces")).one()
        assert kid == key_id(base64.b64decode(key)) and len(stored) == 512 + 12 + 16
        assert plain[:64] not in stored
        store.erased()
        assert files_holding(tmp_path, plain) == []  # nowhere on disk in the clear
    # Another start with the same key reads it back; without it, a clear refusal.
    with run_app(settings) as client:
        r = client.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
        assert r.json()["match"] is True
    store = open_store(Settings(data_dir=tmp_path))
    with pytest.raises(EncryptionKeyError, match="no FACEVERIFY_ENCRYPTION_KEY"):
        store.subject_face_bytes(collection="default", subject_id="ann")
    store.close()


def test_rotation_rewrites_every_row_with_the_new_key(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    faceverify = str(Path(sys.executable).with_name("faceverify"))

    def keyed(key: str = "") -> Settings:
        return Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin", encryption_key=key)

    plain_settings = keyed()
    with run_app(plain_settings) as client:  # written before encryption was turned on
        client.post("/enroll", data={"subject_id": "pre"}, files={"image": fake_image(face(3))})
    with run_app(keyed(old)) as client:
        client.post("/enroll", data={"subject_id": "ann"}, files={"image": fake_image(face(1))})
    rotated = subprocess.run(
        [faceverify, "encryption", "rotate"],
        env={**env, "FACEVERIFY_ENCRYPTION_KEY": new, "FACEVERIFY_ENCRYPTION_OLD_KEYS": old},
        capture_output=True,
        text=True,
    )
    assert rotated.returncode == 0 and "rewrote 2 embeddings" in rotated.stdout, rotated.stderr
    store = open_store(keyed(new))
    with store.engine.connect() as conn:
        kids = set(conn.execute(text("SELECT key_id FROM faces")).scalars())
    assert kids == {key_id(base64.b64decode(new))}
    store.close()
    with run_app(keyed(new)) as client:
        for subject, seed in (("ann", 1), ("pre", 3)):
            r = client.post(
                "/verify", data={"subject_id": subject}, files={"image": fake_image(face(seed))}
            )
            assert r.json()["match"] is True, r.text


def test_a_sealed_embedding_moved_to_another_row_does_not_open() -> None:
    cipher = EmbeddingCipher(os.urandom(32))
    sealed, kid = cipher.seal(b"\x01" * 512, "face-a")
    assert cipher.open(sealed, "face-a", kid) == b"\x01" * 512
    with pytest.raises(EncryptionKeyError, match="does not decrypt"):
        cipher.open(sealed, "face-b", kid)


def test_bad_keys_and_pgvector_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(NotReady, match="32 bytes"):
        open_store(Settings(data_dir=tmp_path, encryption_key=base64.b64encode(b"short").decode()))
    with pytest.raises(NotReady, match="cannot be combined with pgvector"):
        open_store(Settings(data_dir=tmp_path, encryption_key=new_key(), vector_search="pgvector"))
    key_file = tmp_path / "key"
    key_file.write_text(new_key() + "\n")
    store = open_store(Settings(data_dir=tmp_path, encryption_key_file=key_file))
    assert store.cipher is not None
    store.close()


def test_a_postgres_database_with_pgvector_refuses_encryption(postgres_url: str) -> None:
    service = make_fake_service(Settings(database_url=postgres_url), pgvector=True)
    service.store.close()
    with pytest.raises(NotReady, match="drop the face_vectors table"):
        open_store(Settings(database_url=postgres_url, encryption_key=new_key()))
