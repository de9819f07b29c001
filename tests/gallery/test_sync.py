"""GallerySync: what a write costs the other collections' searches (issue 25)."""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pytest

from app.gallery import Database, EmbeddingRows, Gallery
from app.service.transfer import import_faces
from app.vectors.sync import GalleryChanges, GallerySync
from tests.gallery.test_gallery import add, new_faces, synced
from tests.helpers import add_faces, collections


def test_creating_a_collection_leaves_no_gap_in_the_change_log(tmp_path: Path) -> None:
    """POST /collections bumped the version without a change: every process then reloaded
    every index before its next search (47 s on a 1.8M-face server)."""
    store = Gallery.open(f"sqlite:///{tmp_path / 'g.db'}")
    add(store, "ann", 1)
    sync = synced(store)
    sync.sync()
    before = store.changes.version()
    collections(store).create(collection="lobby")
    changes = store.changes.changes_since(version=before)
    assert changes is not None and [c.kind for c in changes] == ["create_collection"]
    full_loads: list[int] = []
    sync._load_all = lambda: full_loads.append(1)  # type: ignore[method-assign]
    assert sync.sync()
    assert full_loads == []
    assert sync.indexes.get("default").search(np.zeros(128, np.float32), 1)[0].subject_id == "ann"


class SlowImportedCollection:
    """The store, with loading collection ``slow`` held until ``release`` is set."""

    def __init__(self, store: Gallery) -> None:
        self.store = GalleryChanges(store)
        self.release = threading.Event()
        self.loads: list[str | None] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)

    def load_embeddings(
        self,
        *,
        dim: int,
        face_ids: list[str] | None = None,
        encoders: Collection[str] = (),
        collection: str | None = None,
    ) -> EmbeddingRows:
        self.loads.append(collection)
        if collection == "slow":
            assert self.release.wait(10)
        return self.store.load_embeddings(
            dim=dim, face_ids=face_ids, encoders=encoders, collection=collection
        )


def test_an_import_reloads_only_its_collection_and_in_the_background(tmp_path: Path) -> None:
    """The first identify in ``default`` after a 1.2M-face import into another collection
    took 57.6 s: it reloaded the imported collection first."""
    store = Gallery.open(f"sqlite:///{tmp_path / 'g.db'}")
    add(store, "ann", 1)
    collections(store).create(collection="slow")
    source = SlowImportedCollection(store)
    sync = GallerySync(source, synced(store).indexes, ("fake",))  # type: ignore[arg-type]
    sync.sync()
    rng = np.random.default_rng(1)
    import_faces(
        store,
        collection="slow",
        subject_ids=[f"s{i}" for i in range(50)],
        embeddings=rng.normal(size=(50, 128)).astype(np.float32),
        encoder="fake",
        pipeline_version="v",
    )
    add(store, "bob", 2)  # a later write in another collection
    sync.sync()  # returns while "slow" still loads
    assert sync.wait_for("default", 0.0)
    hits = sync.indexes.get("default").search(np.full(128, 0.0, np.float32), 2)
    assert {h.subject_id for h in hits} == {"ann", "bob"}
    assert not sync.wait_for("slow", 0.1)  # a search there must wait, or retry
    source.release.set()
    assert sync.wait_for("slow", 10)
    assert len(sync.indexes.get("slow")) == 50
    assert len(sync.indexes.get("default")) == 2
    assert source.loads.count("slow") == 1


def test_a_face_added_while_its_collection_reloads_is_not_lost(tmp_path: Path) -> None:
    store = Gallery.open(f"sqlite:///{tmp_path / 'g.db'}")
    source = SlowImportedCollection(store)
    collections(store).create(collection="slow")
    sync = GallerySync(source, synced(store).indexes, ("fake",))  # type: ignore[arg-type]
    sync.sync()
    import_faces(
        store,
        collection="slow",
        subject_ids=["a", "b"],
        embeddings=np.eye(2, 128, dtype=np.float32),
        encoder="fake",
        pipeline_version="v",
    )
    sync.sync()
    # Written after the reload read the version, before it swaps its index in.
    add_faces(
        store,
        collection="slow",
        subject_id="late",
        faces=new_faces(7),
        encoder="fake",
        pipeline_version="v",
    )
    threading.Timer(0.2, source.release.set).start()
    sync.sync()
    assert sync.wait_for("slow", 10)
    sync.sync()
    assert sorted(sync.indexes.get("slow").subject_faces("late")) != []
    assert len(sync.indexes.get("slow")) == 3


def test_a_writer_locked_out_by_a_long_import_gets_database_busy(tmp_path: Path) -> None:
    """During a 93 s import enrolls answered 500 'database is locked'; now DatabaseBusy
    (503 database_busy with Retry-After) and nothing half-written."""
    import sqlite3

    from app.errors import DatabaseBusy

    path = tmp_path / "g.db"
    Gallery.open(f"sqlite:///{path}").close()
    store = Gallery(Database(f"sqlite:///{path}", busy_timeout=0.2))
    importer = sqlite3.connect(path, isolation_level=None)
    importer.execute("BEGIN IMMEDIATE")  # what an import's transaction holds
    try:
        with pytest.raises(DatabaseBusy) as info:
            add(store, "ann", 1)
        assert info.value.retry_after >= 1
    finally:
        importer.execute("ROLLBACK")
        importer.close()
    add(store, "ann", 1)  # free again
    assert store.subjects.get(collection="default", subject_id="ann").face_count == 1


def test_a_postgresql_writer_locked_out_by_a_long_import_gets_database_busy(
    postgres_url: str,
) -> None:
    """On PostgreSQL an import holds gallery_state's row lock for its whole transaction;
    other writers waited for all of it. Now as on SQLite: DatabaseBusy past the wait."""
    from sqlalchemy import create_engine, text

    from app.errors import DatabaseBusy

    Gallery.open(postgres_url).close()
    store = Gallery(Database(postgres_url, busy_timeout=0.2))
    importer = create_engine(postgres_url)
    try:
        with importer.connect() as conn:
            conn.execute(text("UPDATE gallery_state SET version = version WHERE id = 1"))
            with pytest.raises(DatabaseBusy):  # what an import's transaction holds
                add(store, "ann", 1)
            conn.rollback()
        add(store, "ann", 1)  # free again
        assert store.subjects.get(collection="default", subject_id="ann").face_count == 1
    finally:
        importer.dispose()
        store.close()
