"""The memory backend's write side (app/vectors/memory.py MemoryMirror): this process's
own writes reach its index when they commit, without a replay; what it cannot apply
(an import) is left to the replay; a write that rolls back never reaches it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.gallery import Gallery, NewFace
from app.geometry import Box
from app.service.build import vector_backend
from app.service.enroll import NewEnrollment, write_enrollment
from app.service.transfer import import_faces
from app.settings import Settings
from app.vectors import MemorySearch
from tests.fakes import unit_vector


@pytest.fixture
def memory(tmp_path: Path) -> tuple[Gallery, MemorySearch]:
    gallery = Gallery.open(f"sqlite:///{tmp_path / 'g.db'}")
    picked = Settings(data_dir=tmp_path, vector_search="memory", memory_index="exact")
    search = vector_backend(
        picked, gallery, dim=128, encoders=frozenset({"fake"}), background=False
    )
    assert isinstance(search, MemorySearch)
    yield gallery, search
    gallery.close()


def enroll(gallery: Gallery, subject_id: str, seed: int, encoder: str = "fake") -> None:
    face = NewFace(unit_vector(seed), Box(0, 0, 50, 50), 1.0)
    write_enrollment(gallery, NewEnrollment("default", subject_id, [face], encoder, "v"))


def test_own_writes_reach_the_index_without_a_replay(
    memory: tuple[Gallery, MemorySearch], monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery, search = memory
    replays: list[int] = []
    real = search.gallery.source.changes_since
    monkeypatch.setattr(
        search.gallery.source,
        "changes_since",
        lambda *, version: replays.append(version) or real(version=version),
    )
    enroll(gallery, "ann", 1)
    with gallery.transaction() as tx:
        tx.collections.create("door")
    enroll(gallery, "bob", 2)
    with gallery.transaction() as tx:
        tx.subjects.delete("default", "ann")
    assert len(search.indexes) == 1  # applied at the commit, before any search
    assert search.gallery.version == gallery.changes.version() == 4
    hits, _ = search.search("default", unit_vector(2), 5)
    assert [h.subject_id for h in hits] == ["bob"] and replays == []


def test_what_the_mirror_cannot_apply_is_replayed(memory: tuple[Gallery, MemorySearch]) -> None:
    gallery, search = memory
    enroll(gallery, "ann", 1, encoder="another-model")  # not this index's model
    import_faces(
        gallery,
        collection="default",
        subject_ids=["p1", "p2"],
        embeddings=np.stack([unit_vector(11), unit_vector(12)]),
        encoder="fake",
        pipeline_version="import",
    )
    assert search.gallery.version < gallery.changes.version()  # left to the replay
    search.gallery.sync()
    for _ in range(200):
        if search.gallery.wait_for("default", 0.05):
            break
    hits, _ = search.search("default", unit_vector(12), 5)
    assert [h.subject_id for h in hits][:2] == ["p2", "p1"]
    assert "ann" not in [h.subject_id for h in hits]


def test_a_write_that_rolls_back_never_reaches_the_index(
    memory: tuple[Gallery, MemorySearch],
) -> None:
    gallery, search = memory
    bad = [
        NewFace(unit_vector(3), Box(0, 0, 1, 1), 1.0),
        NewFace(np.full(128, np.inf), Box(0, 0, 1, 1), 1.0),
    ]
    with pytest.raises(ValueError):
        write_enrollment(gallery, NewEnrollment("default", "eve", bad, "fake", "v"))
    assert len(search.indexes) == 0 and search.gallery.version == gallery.changes.version()
