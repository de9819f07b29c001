"""Erasure that leaves nothing (issue 27): once a delete has answered, the embedding's
bytes are in no file the service writes: not the SQLite file, not its WAL, not an index
snapshot; on PostgreSQL, not the relation files once vacuumed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.api.app import create_app
from app.service import FaceService
from app.service.build import open_gallery
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import AUTH, TEST_KEY, parts, service_on
from tests.helpers import fake_service as make_fake_service


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` that holds ``needle`` (its first 64 bytes: a page
    boundary never splits those in these small databases)."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and needle[:64] in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


def stored_bytes(client: TestClient, subject_id: str, collection: str = "default") -> bytes:
    store = parts(client.app.state.service).gallery  # type: ignore[attr-defined]
    (data,) = store.subjects.face_bytes(collection=collection, subject_id=subject_id).values()
    return bytes(data)


def enroll(client: TestClient, subject_id: str, seed: int, **fields: str) -> dict:
    r = client.post(
        "/enroll",
        data={"subject_id": subject_id, **fields},
        files={"image": fake_image(face(seed))},
    )
    assert r.status_code == 201, r.text
    return r.json()


def delete_subject(c: TestClient, ids: dict) -> None:
    assert c.delete("/subjects/ann").status_code == 200


def delete_face(c: TestClient, ids: dict) -> None:
    assert c.delete(f"/subjects/ann/faces/{ids['face']}").status_code == 200


def delete_collection(c: TestClient, ids: dict) -> None:
    assert c.delete("/collections/door").status_code == 200


def purge(c: TestClient, ids: dict) -> None:
    service = c.app.state.service  # type: ignore[attr-defined]
    assert parts(service).retention.purge(now=datetime.now(UTC) + timedelta(days=2)) == 1


@pytest.mark.parametrize("delete", [delete_subject, delete_face, delete_collection, purge])
def test_a_deleted_embedding_is_in_no_file_under_the_data_dir(
    tmp_path: Path, delete: Callable[[TestClient, dict], None]
) -> None:
    settings = Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin")
    app = create_app(settings, builder=lambda s: (make_fake_service(s), {}))
    with TestClient(app, headers=AUTH) as client:
        client.post("/collections", json={"collection_id": "door"})
        where = "door" if delete is delete_collection else "default"
        soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        body = enroll(client, "ann", 1, collection=where, expires_at=soon)
        enroll(client, "bob", 2, collection=where)
        ann, bob = stored_bytes(client, "ann", where), stored_bytes(client, "bob", where)
        # The scan finds what is there: both are in the WAL or the database file now.
        assert files_holding(tmp_path, ann) and files_holding(tmp_path, bob)
        delete(client, {"face": body["faces"][0]["face_id"]})
        assert files_holding(tmp_path, ann) == []
        if delete is not delete_collection:
            assert files_holding(tmp_path, bob)  # the rest of the gallery is still there


def test_secure_delete_is_set_by_the_service(fake_client: TestClient) -> None:
    store = parts(fake_client.app.state.service).gallery  # type: ignore[attr-defined]
    with store.database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1


def test_a_deleted_embedding_leaves_the_index_snapshot(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        api_keys=f"{TEST_KEY}:admin",
        memory_index="ann",
        index_snapshot_min_faces=1,
    )

    def with_snapshots(s: Settings) -> tuple[FaceService, dict]:
        settings = s.model_copy(update={"enroll_min_quality": 0})  # fake faces are flat
        return service_on(settings, open_gallery(s), memory_index="ann"), {}

    app = create_app(settings, builder=with_snapshots)
    with TestClient(app, headers=AUTH) as client:
        enroll(client, "ann", 1)
        enroll(client, "bob", 2)
    with TestClient(create_app(settings, builder=with_snapshots), headers=AUTH) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        assert service.index_ready.wait(30)
        ann = stored_bytes(client, "ann")
        index = tmp_path / "index"
        assert files_holding(index, ann), "the snapshot was not saved"
        assert client.delete("/subjects/ann").status_code == 200
        assert files_holding(tmp_path, ann) == []
        r = client.post("/identify", files={"image": fake_image(face(2))})
        assert [c["subject_id"] for c in r.json()["candidates"]] == ["bob"]


# ---- PostgreSQL ------------------------------------------------------------------------
def _as_postgres(sql: str, database: str = "postgres") -> str:
    done = subprocess.run(
        ["su", "postgres", "-c", f'psql -d {database} -tAc "{sql}"'],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def test_postgres_vacuum_erases_deleted_embeddings(postgres_url: str, tmp_path: Path) -> None:
    if os.geteuid() != 0 or not _as_postgres("SELECT 1"):
        pytest.skip("reading PostgreSQL's files needs root and the local cluster")
    settings = Settings(data_dir=tmp_path, database_url=postgres_url)
    service = make_fake_service(settings, pgvector=True)
    try:
        store = parts(service).gallery
        for i in range(40):
            service.enroll(collection="default", subject_id=f"s{i}", images=[fake_image(face(i))])
        # The newest row of its page: a plain VACUUM frees its space but keeps its bytes.
        newest = stored_bytes_of(store, "s39")
        with store.database.engine.connect() as conn:
            database = conn.execute(text("SELECT current_database()")).scalar_one()
            files = (
                conn.execute(
                    text(
                        "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.relname IN "
                        "('faces', 'face_vectors') OR c.oid IN (SELECT indexrelid FROM pg_index "
                        "WHERE indrelid IN ('faces'::regclass, 'face_vectors'::regclass))"
                    )
                )
                .scalars()
                .all()
            )
        root = Path(_as_postgres("SHOW data_directory"))

        def holding() -> list[str]:
            _as_postgres("CHECKPOINT", database)
            return [f for f in files if newest[:64] in (root / f).read_bytes()]

        assert len(holding()) == 3  # faces, face_vectors and the HNSW graph
        service.delete_subject(collection="default", subject_id="s39")
        assert len(holding()) == 3  # deleted, not yet vacuumed
        parts(service).erasure.vacuum()
        assert "ix_face_vectors_hnsw" not in str(holding()) and len(holding()) < 3
        parts(service).erasure.vacuum(full=True)
        with store.database.engine.connect() as conn:  # VACUUM FULL gives the tables new files
            files = [
                f
                for f in conn.execute(
                    text(
                        "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.relname "
                        "IN ('faces', 'face_vectors')"
                    )
                ).scalars()
            ]
        assert holding() == []
        assert service.verify(collection="default", subject_id="s3", image=fake_image(face(3)))
    finally:
        service.close()


def stored_bytes_of(store, subject_id: str) -> bytes:
    (data,) = store.subjects.face_bytes(collection="default", subject_id=subject_id).values()
    return bytes(np.frombuffer(data, dtype="<f4").tobytes())


def test_a_long_reader_does_not_hold_a_delete_and_the_checkpoint_follows(
    fake_client: TestClient, tmp_path: Path
) -> None:
    """A reader holding an old snapshot (another process loading the gallery) keeps the
    WAL from being truncated: the delete answers anyway, and the background upkeep
    finishes the erasure once the reader is gone."""
    import sqlite3
    import time

    enroll(fake_client, "ann", 1)
    ann = stored_bytes(fake_client, "ann")
    reader = sqlite3.connect(tmp_path / "faceverify.db")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM faces").fetchone()  # holds its snapshot
    try:
        started = time.monotonic()
        assert fake_client.delete("/subjects/ann").status_code == 200
        assert time.monotonic() - started < 10  # not 20 tries x the 30 s busy timeout
    finally:
        reader.rollback()
        reader.close()
    deadline = time.monotonic() + 15
    while files_holding(tmp_path, ann):
        assert time.monotonic() < deadline, "the upkeep did not finish the erasure"
        time.sleep(0.5)
