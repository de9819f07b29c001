"""The vector backend's contract (app/vectors/backend.py), one suite run against both
backends: what a write through the gallery's unit of work makes searchable, what a
delete or a rolled-back write leaves out, the counts, and the lifecycle. The memory
backend runs on SQLite and PostgreSQL; pgvector needs FACEVERIFY_TEST_POSTGRES_URL
with the extension (.ci/run builds it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.gallery import Gallery, NewFace
from app.geometry import Box
from app.service.build import vector_backend
from app.service.enroll import NewEnrollment, write_enrollment
from app.service.transfer import import_faces
from app.settings import Settings
from app.vectors import VectorBackend
from tests.fakes import unit_vector
from tests.helpers import fresh_postgres_database

BACKENDS = ["memory-sqlite", "memory-postgres", "pgvector"]


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Gallery, VectorBackend]]:
    """A gallery and the vector backend build.py picks for it (its write side joined)."""
    kind = str(request.param)
    databases = None
    if kind == "memory-sqlite":
        url = f"sqlite:///{tmp_path / 'g.db'}"
    else:
        databases = fresh_postgres_database()
        url = next(databases)
    gallery = Gallery.open(url)
    picked = Settings(
        data_dir=tmp_path,
        vector_search="pgvector" if kind == "pgvector" else "memory",
        memory_index="exact",
    )
    try:
        found = vector_backend(
            picked, gallery, dim=128, encoders=frozenset({"fake"}), background=False
        )
    except Exception:  # noqa: BLE001 - no pgvector in this PostgreSQL
        gallery.close()
        next(databases, None) if databases else None
        if os.environ.get("CI"):
            raise
        pytest.skip("the test PostgreSQL has no pgvector (see .ci/pgvector.sh)")
    assert found.name == ("pgvector" if kind == "pgvector" else "memory")
    yield gallery, found
    gallery.close()
    if databases is not None:
        next(databases, None)


def enroll(
    gallery: Gallery, subject_id: str, *seeds: int, collection: str = "default"
) -> list[str]:
    faces = [NewFace(unit_vector(s), Box(0, 0, 50, 50), 1.0) for s in seeds]
    new = NewEnrollment(collection, subject_id, faces, "fake", "v")
    stored, _, _ = write_enrollment(gallery, new)
    return [f.id for f in stored]


def nearest(search: VectorBackend, seed: int, collection: str = "default") -> list[str]:
    hits, _ = search.search(collection, unit_vector(seed), 5)
    return [h.subject_id for h in hits]


def test_a_write_is_searched_once_it_commits(backend: tuple[Gallery, VectorBackend]) -> None:
    gallery, search = backend
    assert search.ready.is_set()
    enroll(gallery, "ann", 1, 2)
    enroll(gallery, "bob", 3)
    assert nearest(search, 1)[0] == "ann" and nearest(search, 3)[0] == "bob"
    hits, searched = search.search("default", unit_vector(2), 1)
    assert hits[0].distance < 1e-3 and searched == 3  # float32 arithmetic
    assert search.counts() == {"faces": 3, "subjects": 2}
    assert search.counts("default") == {"faces": 3, "subjects": 2}
    assert search.face_counts() == {"default": 3}
    assert search.subject_count("default") == 2


def test_a_stored_face_left_out_and_a_shortlist_rescored(
    backend: tuple[Gallery, VectorBackend],
) -> None:
    gallery, search = backend
    (first, _) = enroll(gallery, "ann", 1, 2)
    enroll(gallery, "bob", 3)
    hits, _ = search.search("default", unit_vector(1), 5, exclude=first)
    assert first not in [h.face_id for h in hits]
    moved = unit_vector(3, noise=0.05)
    rescored = search.rescore("default", moved, search.search("default", unit_vector(3), 5)[0], 5)
    assert rescored[0].subject_id == "bob"
    assert rescored[0].distance == pytest.approx(
        float(np.linalg.norm(moved - unit_vector(3))), abs=1e-4
    )


def test_deletes_are_never_searched(backend: tuple[Gallery, VectorBackend]) -> None:
    gallery, search = backend
    ann = enroll(gallery, "ann", 1, 2)
    enroll(gallery, "bob", 3)
    with gallery.transaction() as tx:
        tx.faces.delete("default", "ann", ann[0])
    hits, _ = search.search("default", unit_vector(1), 5)
    assert ann[0] not in [h.face_id for h in hits]
    with gallery.transaction() as tx:
        tx.subjects.delete("default", "bob")
    assert "bob" not in nearest(search, 3)
    assert search.counts() == {"faces": 1, "subjects": 1}


def test_collections_stay_apart_and_a_deleted_one_is_gone(
    backend: tuple[Gallery, VectorBackend],
) -> None:
    gallery, search = backend
    with gallery.transaction() as tx:
        tx.collections.create("door")
    enroll(gallery, "ann", 1, collection="door")
    enroll(gallery, "ann", 5)
    assert search.search("default", unit_vector(1), 1)[0][0].distance > 0.5
    assert nearest(search, 1, "door") == ["ann"]
    from datetime import UTC, datetime

    with gallery.transaction() as tx:
        tx.collections.delete("door", datetime.now(UTC))
    assert nearest(search, 1, "door") == []
    assert search.face_counts() == {"default": 1}


def test_a_write_that_rolls_back_is_never_searched(
    backend: tuple[Gallery, VectorBackend],
) -> None:
    gallery, search = backend
    enroll(gallery, "ann", 1)
    bad = [
        NewFace(unit_vector(2), Box(0, 0, 1, 1), 1.0),
        NewFace(np.full(128, np.nan), Box(0, 0, 1, 1), 1.0),
    ]
    with pytest.raises(ValueError):
        write_enrollment(gallery, NewEnrollment("default", "bob", bad, "fake", "v"))
    assert "bob" not in nearest(search, 2)
    assert search.counts() == {"faces": 1, "subjects": 1}


def test_an_import_is_searched(backend: tuple[Gallery, VectorBackend]) -> None:
    gallery, search = backend
    vectors = np.stack([unit_vector(s) for s in range(20)])
    import_faces(
        gallery,
        collection="default",
        subject_ids=[f"p{s}" for s in range(20)],
        embeddings=vectors,
        encoder="fake",
        pipeline_version="import",
    )
    found: list[str] = []
    for _ in range(100):  # memory: the collection reloads in the background
        try:
            found = nearest(search, 7)
            break
        except Exception:  # noqa: BLE001 - IndexLoading while it reloads
            import time

            time.sleep(0.05)
    assert found[:1] == ["p7"]
    assert search.counts("default")["faces"] == 20


def test_rebuild_and_erase_keep_the_answers(backend: tuple[Gallery, VectorBackend]) -> None:
    gallery, search = backend
    ann = enroll(gallery, "ann", 1)
    search.erase(ann, None)  # nothing beside the database in this setup: no error
    search.rebuild()
    assert nearest(search, 1) == ["ann"]
