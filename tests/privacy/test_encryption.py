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
from app.gallery.erasure import checkpoint
from app.service.build import open_gallery
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import AUTH, TEST_KEY, parts, service_on
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
        store = parts(client.app.state.service).gallery  # type: ignore[attr-defined]
        plain = next(
            iter(store.subjects.face_bytes(collection="default", subject_id="ann").values())
        )
        with store.database.engine.connect() as conn:
            stored, kid = conn.execute(text("SELECT embedding, key_id FROM faces")).one()
        assert kid == key_id(base64.b64decode(key)) and len(stored) == 1 + 512 + 12 + 16
        assert plain[:64] not in stored
        checkpoint(store.database)
        assert files_holding(tmp_path, plain) == []  # nowhere on disk in the clear
    # Another start with the same key reads it back; without it, a clear refusal.
    with run_app(settings) as client:
        r = client.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
        assert r.json()["match"] is True
    with pytest.raises(NotReady, match="no FACEVERIFY_ENCRYPTION_KEY"):
        open_gallery(Settings(data_dir=tmp_path))


def test_rotation_rewrites_every_row_with_the_new_key(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    faceverify = str(Path(sys.executable).with_name("faceverify"))

    def keyed(key: str = "") -> Settings:
        return Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin", encryption_key=key)

    plain_settings = keyed()
    with run_app(plain_settings) as client:  # written before encryption was turned on
        client.post("/enroll", data={"subject_id": "pre"}, files={"image": fake_image(face(3))})
    # A key beside plaintext rows: no start until they are sealed (issue 37).
    with pytest.raises(NotReady, match="1 faces are stored in plaintext"):
        open_gallery(keyed(old))
    sealed = subprocess.run(
        [faceverify, "encryption", "rotate"],
        env={**env, "FACEVERIFY_ENCRYPTION_KEY": old},
        capture_output=True,
        text=True,
    )
    assert "1 of them were stored in plaintext" in sealed.stdout, sealed.stderr
    with run_app(keyed(old)) as client:
        client.post("/enroll", data={"subject_id": "ann"}, files={"image": fake_image(face(1))})
    rotated = subprocess.run(
        [faceverify, "encryption", "rotate"],
        env={**env, "FACEVERIFY_ENCRYPTION_KEY": new, "FACEVERIFY_ENCRYPTION_OLD_KEYS": old},
        capture_output=True,
        text=True,
    )
    assert rotated.returncode == 0 and "rewrote 2 embeddings" in rotated.stdout, rotated.stderr
    store = open_gallery(keyed(new))
    with store.database.engine.connect() as conn:
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
    sealed, kid = cipher.seal(b"\x01" * 512, ("face-a", "door", "ann"))
    assert cipher.open(sealed, ("face-a", "door", "ann"), kid) == b"\x01" * 512
    for elsewhere in (("face-b", "door", "ann"), ("face-a", "door", "bob"), ("face-a", "x", "ann")):
        with pytest.raises(EncryptionKeyError, match="does not decrypt"):
            cipher.open(sealed, elsewhere, kid)


def test_the_quick_pass_opens_exactly_what_the_row_by_row_path_opens() -> None:
    """Loading decrypts a slice in one quick pass (issue 41); whatever it does not open
    goes the row-by-row way, so the answer per row is the same as before for sealed,
    moved, legacy, plain, foreign-key and truncated rows, under each policy."""
    from app.gallery.crypto import NONCE_BYTES, Sealing, SealPolicy

    old, current = os.urandom(32), os.urandom(32)
    cipher = EmbeddingCipher(current, [old])
    rows = []
    for i in range(6):
        owner = (f"face-{i}", "door", f"s{i}")
        sealed, kid = EmbeddingCipher(old if i == 1 else current).seal(bytes([i]) * 512, owner)
        rows.append((*owner, sealed, kid))
    moved = rows[2]
    rows[2] = (moved[0], moved[1], "someone-else", moved[3], moved[4])
    legacy_nonce = os.urandom(NONCE_BYTES)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    legacy = legacy_nonce + AESGCM(current).encrypt(legacy_nonce, b"\x07" * 512, b"face-3")
    rows[3] = ("face-3", "door", "s3", legacy, key_id(current))
    rows[4] = ("face-4", "door", "s4", b"\x09" * 512, None)  # plain
    rows[5] = ("face-5", "door", "s5", rows[5][3][:-1], rows[5][4])  # cut short
    rows.append(("face-6", "door", "s6", rows[0][3], "unknown-kid"))
    rows.append(("face-7", "door", "s7", b"\x02abcd", key_id(current)))  # no room for a nonce
    for policy in (SealPolicy(), SealPolicy(refuse_plain=True, refuse_legacy=True, keyed=True)):
        sealing = Sealing(cipher, policy)
        one_by_one = [sealing.open(r[3], (r[0], r[1], r[2]), r[4]) for r in rows]
        assert sealing.open_rows(rows) == one_by_one
    assert one_by_one[0] == bytes([0]) * 512 and one_by_one[1] == bytes([1]) * 512
    # moved, legacy refused, plain refused, cut, unknown key, too short (it raised
    # ValueError, which failed the whole load)
    assert one_by_one[2:] == [None] * 6


def test_bad_keys_and_pgvector_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(NotReady, match="32 bytes"):
        open_gallery(
            Settings(data_dir=tmp_path, encryption_key=base64.b64encode(b"short").decode())
        )
    with pytest.raises(NotReady, match="cannot be combined with pgvector"):
        open_gallery(
            Settings(data_dir=tmp_path, encryption_key=new_key(), vector_search="pgvector")
        )
    key_file = tmp_path / "key"
    key_file.write_text(new_key() + "\n")
    store = open_gallery(Settings(data_dir=tmp_path, encryption_key_file=key_file))
    assert store.sealing.cipher is not None
    store.close()


def test_a_postgres_database_with_pgvector_refuses_encryption(postgres_url: str) -> None:
    service = make_fake_service(Settings(database_url=postgres_url), pgvector=True)
    service.close()
    with pytest.raises(NotReady, match="drop the face_vectors table"):
        open_gallery(Settings(database_url=postgres_url, encryption_key=new_key()))


# ---- issue 37: the attacks on encryption at rest ---------------------------------------
def _keyed(tmp_path: Path, key: str = "", **more: object) -> Settings:
    return Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin", encryption_key=key, **more)


def _faces_table(tmp_path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(tmp_path / "faceverify.db") as conn:
        return conn.execute(
            "SELECT id, subject_id, embedding, key_id FROM faces ORDER BY id"
        ).fetchall()


def test_a_wrong_or_missing_key_stops_the_start_and_changes_nothing(tmp_path: Path) -> None:
    right = new_key()
    with run_app(_keyed(tmp_path, right)) as client:
        client.post("/enroll", data={"subject_id": "ann"}, files={"image": fake_image(face(1))})
    before = _faces_table(tmp_path)
    for settings, says in (
        (_keyed(tmp_path, new_key()), "wrong key"),
        (_keyed(tmp_path), "no FACEVERIFY_ENCRYPTION_KEY"),
    ):
        with pytest.raises(NotReady, match=says):
            open_gallery(settings)
        with pytest.raises(NotReady, match=says), run_app(settings):
            pass
        faceverify = str(Path(sys.executable).with_name("faceverify"))
        env = {
            "FACEVERIFY_DATA_DIR": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "FACEVERIFY_ENCRYPTION_KEY": settings.encryption_key.get_secret_value(),
        }
        done = subprocess.run(
            [faceverify, "encryption", "rotate"], env=env, capture_output=True, text=True
        )
        assert done.returncode != 0 and says in done.stderr, done.stderr
    assert _faces_table(tmp_path) == before
    # The right key still opens everything: nothing was mixed in.
    with run_app(_keyed(tmp_path, right)) as client:
        r = client.post("/verify", data={"subject_id": "ann"}, files={"image": fake_image(face(1))})
        assert r.json()["match"] is True
        assert client.post("/identify", files={"image": fake_image(face(1))}).status_code == 200


def test_a_row_moved_to_another_subject_or_slipped_in_plain_does_not_match(
    tmp_path: Path,
) -> None:
    import sqlite3

    from tests.fakes import unit_vector

    key = new_key()
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin",
           "FACEVERIFY_ENCRYPTION_KEY": key}  # fmt: skip
    faceverify = str(Path(sys.executable).with_name("faceverify"))
    with run_app(_keyed(tmp_path, key)) as client:
        client.post("/enroll", data={"subject_id": "ann"}, files={"image": fake_image(face(1))})
        client.post("/enroll", data={"subject_id": "bob"}, files={"image": fake_image(face(2))})
    with sqlite3.connect(tmp_path / "faceverify.db") as conn:
        # The attacker moves ann's row to bob, slips a plain row of face 3 into bob, and
        # clears the gallery's sealed flag.
        conn.execute("UPDATE faces SET subject_id = 'bob' WHERE subject_id = 'ann'")
        template = conn.execute("SELECT * FROM faces LIMIT 1").fetchone()
        columns = [c[1] for c in conn.execute("PRAGMA table_info(faces)")]
        row = dict(zip(columns, template, strict=True))
        row.update(id="forged", subject_id="bob", key_id=None, embedding=unit_vector(3).tobytes())
        conn.execute(
            f"INSERT INTO faces ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )
        conn.execute("UPDATE gallery_state SET sealed = 0")
    # A plaintext row beside the key: no start; the rotation leaves it, names it, and
    # deletes it when told to (it never seals it into a real one).
    with pytest.raises(NotReady, match="stored in plaintext"):
        open_gallery(_keyed(tmp_path, key))
    rotate = [faceverify, "encryption", "rotate"]
    left = subprocess.run(rotate, env=env, capture_output=True, text=True)
    assert left.returncode == 1 and "forged" in left.stderr, left.stderr
    deleted = subprocess.run([*rotate, "--delete-left"], env=env, capture_output=True, text=True)
    assert deleted.returncode == 0 and "deleted 1 rows" in deleted.stdout, deleted.stderr
    with run_app(_keyed(tmp_path, key)) as client:
        r = client.post("/verify", data={"subject_id": "bob"}, files={"image": fake_image(face(1))})
        assert r.json().get("match") is not True, r.text  # ann's face is not bob's
        r = client.post("/verify", data={"subject_id": "bob"}, files={"image": fake_image(face(3))})
        assert r.json().get("match") is not True, r.text
        service = client.app.state.service  # type: ignore[attr-defined]
        assert service.index_ready.wait(30)
        r = client.post("/identify", files={"image": fake_image(face(1))}).json()
        assert all(c["distance"] > 0.1 for c in r["candidates"]), r
        kinds = {e["action"] for e in client.get("/audit?subject=bob").json()["items"]}
        assert "delete_face" in kinds


def test_a_gallery_state_cleared_beside_sealed_rows_stops_the_start(tmp_path: Path) -> None:
    import sqlite3

    key = new_key()
    with run_app(_keyed(tmp_path, key)) as client:
        client.post("/enroll", data={"subject_id": "ann"}, files={"image": fake_image(face(1))})
    with sqlite3.connect(tmp_path / "faceverify.db") as conn:
        conn.execute("UPDATE gallery_state SET key_ids = NULL")
    with pytest.raises(NotReady, match="changed outside faceverify"):
        open_gallery(_keyed(tmp_path, key))


def test_with_a_key_no_index_snapshot_holds_an_embedding(tmp_path: Path) -> None:
    from app.service import FaceService
    from tests.privacy.test_erasure import stored_bytes

    def with_snapshots(s: Settings) -> tuple[FaceService, dict]:
        settings = s.model_copy(update={"enroll_min_quality": 0})  # fake faces are flat
        return service_on(settings, open_gallery(s), memory_index="ann"), {}

    plain_settings = _keyed(tmp_path, memory_index="ann", index_snapshot_min_faces=1)
    for _ in range(2):  # written plain, then a snapshot saved at the next start
        with TestClient(create_app(plain_settings, builder=with_snapshots), headers=AUTH) as c:
            c.post(
                "/enroll", data={"subject_id": f"s{_}"}, files={"image": fake_image(face(_ + 1))}
            )
            assert c.app.state.service.index_ready.wait(30)  # type: ignore[attr-defined]
    assert list((tmp_path / "index").rglob("vec.npy")), "no snapshot was saved to begin with"
    key = new_key()
    subprocess.run(
        [str(Path(sys.executable).with_name("faceverify")), "encryption", "rotate"],
        env={
            "FACEVERIFY_DATA_DIR": str(tmp_path),
            "PATH": "/usr/bin:/bin",
            "FACEVERIFY_ENCRYPTION_KEY": key,
        },
        check=True,
        capture_output=True,
    )
    keyed = _keyed(tmp_path, key, memory_index="ann", index_snapshot_min_faces=1)
    for _ in range(2):  # the start that finds the old snapshot, and a restart
        with TestClient(create_app(keyed, builder=with_snapshots), headers=AUTH) as client:
            assert client.app.state.service.index_ready.wait(30)  # type: ignore[attr-defined]
            held = stored_bytes(client, "s0")
            r = client.post("/identify", files={"image": fake_image(face(1))}).json()
            assert r["candidates"][0]["subject_id"] == "s0"
            checkpoint(parts(client.app.state.service).gallery.database)
            assert files_holding(tmp_path, held) == []
    assert not list((tmp_path / "index").rglob("vec.npy"))
