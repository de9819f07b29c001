"""Store and index: transactions, real deletion, and keeping several indexes in step."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from app.errors import FaceNotFound, SubjectNotFound
from app.gallery import Gallery, NewFace, changes, faces
from app.gallery.models import Face, GalleryEvent, RekognitionUser, RekognitionUserFace, Subject
from app.geometry import Box
from app.scoring.distance import distances
from app.vectors.index import ExactIndex, Partitions
from app.vectors.sync import GalleryChanges, GallerySync
from tests.fakes import unit_vector
from tests.helpers import add_faces, delete_face, delete_subject


def new_faces(*seeds: int) -> list[NewFace]:
    return [
        NewFace(embedding=unit_vector(s), box=Box(0, 0, 50, 50), detector_score=1.0) for s in seeds
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Gallery:
    """Every store test runs on SQLite and on a real PostgreSQL: the same behaviour."""
    if request.param == "sqlite":
        s = Gallery.open(f"sqlite:///{tmp_path / 'g.db'}")
        yield s
        s.close()
        return
    from tests.helpers import fresh_postgres_database

    databases = fresh_postgres_database()
    s = Gallery.open(next(databases))
    yield s
    s.close()
    next(databases, None)


def add(store: Gallery, subject_id: str, *seeds: int, encoder: str = "fake") -> list[str]:
    faces, _, _ = add_faces(
        store,
        collection="default",
        subject_id=subject_id,
        faces=new_faces(*seeds),
        encoder=encoder,
        pipeline_version="v",
    )
    return [f.id for f in faces]


def synced(store: Gallery, encoders: tuple[str, ...] = ("fake",)) -> GallerySync:
    """Exact indexes of ``encoders``' faces, one a collection, kept in step with ``store``."""
    return GallerySync(GalleryChanges(store), Partitions(128), encoders)


def count(store: Gallery, model: type) -> int:
    with store.database.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_add_faces_is_all_or_nothing(store: Gallery) -> None:
    bad = new_faces(1, 2) + [NewFace(np.full(128, np.nan), Box(0, 0, 1, 1), 1.0)]
    with pytest.raises(ValueError):
        add_faces(
            store,
            collection="default",
            subject_id="a",
            faces=bad,
            encoder="fake",
            pipeline_version="v",
        )
    assert count(store, Subject) == 0 and count(store, Face) == 0
    assert store.changes.version() == 0


def test_embeddings_round_trip_exactly(store: Gallery) -> None:
    ids = add(store, "a", 1, 2)
    rows = store.faces.load(dim=128)
    assert sorted(rows.face_ids) == sorted(ids)
    for face_id, vector in zip(rows.face_ids, rows.matrix, strict=True):
        seed = 1 if face_id == ids[0] else 2
        assert np.array_equal(vector, unit_vector(seed))


def test_delete_subject_removes_every_row(store: Gallery) -> None:
    add(store, "a", 1, 2)
    add(store, "b", 3)
    deleted, _ = delete_subject(store, collection="default", subject_id="a")
    assert len(deleted) == 2
    with store.database.engine.connect() as conn:
        assert conn.execute(select(Face).where(Face.subject_id == "a")).first() is None
        assert conn.execute(select(Subject).where(Subject.id == "a")).first() is None
    assert count(store, Face) == 1
    with pytest.raises(SubjectNotFound):
        delete_subject(store, collection="default", subject_id="a")


def test_delete_face_keeps_the_subject(store: Gallery) -> None:
    ids = add(store, "a", 1, 2)
    add(store, "b", 3)
    delete_face(store, collection="default", subject_id="a", face_id=ids[0])
    assert store.subjects.get(collection="default", subject_id="a").face_count == 1
    with pytest.raises(FaceNotFound):
        delete_face(store, collection="default", subject_id="a", face_id=ids[0])
    with pytest.raises(FaceNotFound):  # a face is reachable only through its own subject
        delete_face(store, collection="default", subject_id="b", face_id=ids[1])
    assert store.subjects.get(collection="default", subject_id="a").face_count == 1


def test_list_subjects_pages_and_filters_by_prefix(store: Gallery) -> None:
    for name in ["ann", "anna", "bob", "a_b", "axb"]:
        add(store, name, hash(name) % 1000)
    page, total = store.subjects.page(collection="default", offset=0, limit=2)
    assert total == 5 and [s.id for s in page] == ["a_b", "ann"]
    page, total = store.subjects.page(collection="default", offset=0, limit=10, prefix="ann")
    assert total == 2 and {s.id for s in page} == {"ann", "anna"}
    # LIKE wildcards in the prefix are literal ("%" is no subject id since issue 37).
    page, total = store.subjects.page(collection="default", offset=0, limit=10, prefix="a_")
    assert [s.id for s in page] == ["a_b"]


def test_index_search_matches_brute_force() -> None:
    index = ExactIndex(128)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 128)).astype(np.float32)
    subjects = [f"s{i % 40}" for i in range(300)]
    index.add([f"f{i}" for i in range(300)], subjects, vectors)
    index.remove_faces([f"f{i}" for i in range(0, 300, 7)])
    keep = [i for i in range(300) if i % 7]
    query = rng.normal(size=128).astype(np.float32)
    d = distances(query, vectors[keep])
    best: dict[str, float] = {}
    for i, dist in zip(keep, d, strict=True):
        best[subjects[i]] = min(best.get(subjects[i], np.inf), float(dist))
    want = sorted(best.items(), key=lambda kv: kv[1])[:5]
    got = index.search(query, 5)
    assert [h.subject_id for h in got] == [s for s, _ in want]
    assert np.allclose([h.distance for h in got], [x for _, x in want], atol=1e-5)
    assert len(index) == len(keep)


def test_index_remove_subject_leaves_no_rows() -> None:
    index = ExactIndex(128)
    index.add(["a1", "b1", "a2"], ["a", "b", "a"], np.stack([unit_vector(i) for i in range(3)]))
    index.remove_subject("a")
    assert len(index) == 1 and index.subject_faces("a") == []
    hits = index.search(unit_vector(0), 5)
    assert [h.subject_id for h in hits] == ["b"]


def test_a_second_index_catches_up_through_the_change_log(store: Gallery) -> None:
    mine, theirs = synced(store), synced(store)
    mine.sync()
    theirs.sync()
    a = add(store, "a", 1, 2)
    add(store, "b", 3)
    delete_face(store, collection="default", subject_id="a", face_id=a[0])
    delete_subject(store, collection="default", subject_id="b")
    assert theirs.sync()
    assert (
        theirs.indexes.get("default").subject_faces("a") == [a[1]]
        and theirs.indexes.get("default").subject_faces("b") == []
    )
    assert len(theirs.indexes) == 1 and theirs.version == store.changes.version()
    assert not theirs.sync()  # nothing new: one cheap query


def test_an_index_never_holds_another_models_embeddings(store: Gallery) -> None:
    """Faces store their encoder; an index loads and replays only its model's, so a
    search never compares embeddings of two models (issue 10)."""
    early = synced(store, ("fake", "fake_other_runtime"))
    early.sync()
    mine = add(store, "a", 1)
    theirs = add(store, "b", 2, encoder="other_model")
    runtime = add(store, "c", 3, encoder="fake_other_runtime")
    late = synced(store, ("fake", "fake_other_runtime"))
    for sync in (early, late):  # by replaying the log, and by loading everything
        sync.sync()
        assert sync.indexes.get("default").subject_faces("a") == mine
        assert sync.indexes.get("default").subject_faces("b") == [] and theirs
        assert sync.indexes.get("default").subject_faces("c") == runtime
        assert {h.subject_id for h in sync.indexes.get("default").search(unit_vector(2), 5)} == {
            "a",
            "c",
        }


def test_an_index_behind_the_pruned_log_reloads_everything(
    store: Gallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "EVENT_RETENTION", 2)
    sync = synced(store)
    sync.sync()
    for i in range(5):
        add(store, f"s{i}", i)
    assert count(store, GalleryEvent) <= 2
    assert store.changes.changes_since(version=sync.version) is None
    sync.sync()
    assert len(sync.indexes) == 5 and sync.indexes.get("default").subject_count == 5


def test_migrations_build_exactly_the_models_schema(store: Gallery) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.gallery.models import Base

    with store.database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert store.database.schema_revision() == "0009"


def test_opening_a_migrated_database_again_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    first = Gallery.open(url)
    add(first, "a", 1)
    first.close()
    again = Gallery.open(url)
    assert (
        again.subjects.get(collection="default", subject_id="a").face_count == 1
        and again.changes.version() == 1
    )
    again.close()


def test_concurrent_writers_never_leave_an_index_behind(store: Gallery) -> None:
    """Two writers (as two replicas would) enroll and delete at once while a third
    index keeps syncing; in the end it holds exactly what the database holds."""
    import threading

    watcher = synced(store)
    writers = [Gallery.connect(store.database.url) for _ in range(2)]
    stop = threading.Event()

    def write(w: int) -> None:
        for i in range(15):
            ids = add(writers[w], f"w{w}-s{i}", 100 * w + i, 1000 + 100 * w + i)
            if i % 3 == 0:
                delete_face(
                    writers[w], collection="default", subject_id=f"w{w}-s{i}", face_id=ids[0]
                )
            if i % 5 == 0:
                delete_subject(writers[w], collection="default", subject_id=f"w{w}-s{i}")

    def watch() -> None:
        while not stop.is_set():
            watcher.sync()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    observer = threading.Thread(target=watch)
    observer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    observer.join()
    watcher.sync()
    rows = store.faces.load(dim=128)
    assert sorted(rows.face_ids) == sorted(
        f for s in {*rows.subject_ids} for f in watcher.indexes.get("default").subject_faces(s)
    )
    assert len(watcher.indexes) == len(rows.face_ids) and watcher.version == store.changes.version()
    for w in writers:
        w.close()


def test_connecting_to_a_store_does_not_migrate_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    store = Gallery.connect(url)
    assert store.database.schema_revision() is None  # nothing was created
    assert store.database.migrate() == "0009" and store.database.schema_revision() == "0009"
    store.close()


def test_loading_every_embedding_in_slices_gives_the_same_rows(
    store: Gallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_embeddings reads in slices (so a load of millions of faces never holds the
    GIL for seconds); slice edges must not drop, repeat or misalign a row."""
    for i in range(9):
        add(store, f"s{i}", 3 * i, 3 * i + 1, 3 * i + 2)
    whole = store.faces.load(dim=128)
    monkeypatch.setattr(faces, "LOAD_SLICE", 4)
    sliced = store.faces.load(dim=128)
    assert sliced.face_ids == whole.face_ids and len(whole.face_ids) == 27
    assert sliced.subject_ids == whole.subject_ids and sliced.collections == whole.collections
    assert np.array_equal(sliced.matrix, whole.matrix)
    for face_id, vector in zip(sliced.face_ids, sliced.matrix, strict=True):
        _, stored = store.faces.embedding(collection="default", face_id=face_id, encoders=("fake",))
        assert np.array_equal(vector, stored)


def test_a_faces_user_association_goes_with_the_face_on_every_delete_path(store: Gallery) -> None:
    """Rekognition's users (issue 40): deleting a face by any path (one face, its
    subject, its collection) leaves no association naming it, on SQLite and PostgreSQL."""
    with store.transaction(versioned=False) as tx:
        tx.collections.create("door")
    faces = {}
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        stored, _, _ = add_faces(
            store,
            collection="door",
            subject_id=name,
            faces=new_faces(seed),
            encoder="fake",
            pipeline_version="v",
        )
        faces[name] = stored[0].id
    with store.transaction(versioned=False) as tx:
        assert tx.users.create("door", "u", "token-1")
        assert tx.users.create("door", "u", "token-1")  # a retry of the same request
        assert not tx.users.create("door", "u", "token-2")
        done, failed = tx.users.associate("door", "u", [*faces.values(), "missing"])
    assert sorted(done) == sorted(faces.values()) and failed == {"missing": "FACE_NOT_FOUND"}
    assert store.users.of_faces(collection="door", face_ids=list(faces.values())) == {
        f: "u" for f in faces.values()
    }
    with store.transaction() as tx:
        tx.faces.delete("door", "a", faces["a"])
    with store.transaction() as tx:
        tx.subjects.delete("door", "b")
    assert list(store.users.of_faces(collection="door", face_ids=list(faces.values()))) == [
        faces["c"]
    ]
    with store.transaction() as tx:
        tx.collections.delete("door", datetime.now(UTC))
    assert count(store, RekognitionUserFace) == 0 and count(store, RekognitionUser) == 0


def test_reads_of_some_faces_go_by_their_key_not_the_whole_collection(tmp_path: Path) -> None:
    """Given two or more face ids and a collection, SQLite chose the (collection,
    subject) index over the faces' key and read every face of the collection: each new
    /identify paid ~350 ms at 1M faces for its candidates' recipes (issue 41). Every read
    of faces by id is planned by the key."""
    from sqlalchemy import event

    store = Gallery.open(f"sqlite:///{tmp_path / 'g.db'}")
    ids = [face for i in range(30) for face in add(store, f"s{i}", 2 * i + 1, 2 * i + 2)]
    some = ids[3:8]
    plans: list[str] = []

    def explain(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "faces" in statement:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plans.append(" | ".join(str(r[-1]) for r in rows))

    event.listen(store.database.engine, "before_cursor_execute", explain)
    assert set(store.faces.pipeline_versions(collection="default", face_ids=some)) == set(some)
    rows = store.faces.load(dim=128, encoders=("fake",), collection="default", face_ids=some)
    assert sorted(rows.face_ids) == sorted(some)
    assert store.users.of_faces_known(collection="default", face_ids=some)
    store.users.of_faces(collection="default", face_ids=some)
    event.remove(store.database.engine, "before_cursor_execute", explain)
    assert len(plans) >= 4
    for plan in plans:
        assert "ix_faces_collection_subject" not in plan, plan
        assert "ix_rekognition_user_faces_user" not in plan, plan
        assert "SCAN faces" not in plan, plan
    store.close()


def test_loading_holds_the_collector_off_and_gives_it_back_as_it_was(tmp_path: Path) -> None:
    """A load pauses Python's cyclic collector (half of a 1M-face load: issue 41), nested
    and concurrent pauses share it, and it runs again after, unless it was off before."""
    import gc

    from app.gallery.faces import collector_paused

    store = Gallery.open(f"sqlite:///{tmp_path / 'g.db'}")
    add(store, "ann", 1, 2)
    seen: list[bool] = []
    original = store.faces._opened

    def spy(part):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return original(part)

    store.faces._opened = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    try:
        assert len(store.faces.load(dim=128).face_ids) == 2
        assert seen == [False] and gc.isenabled()
        with collector_paused():
            with collector_paused():
                assert not gc.isenabled()
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()
        store.faces.load(dim=128)
        assert not gc.isenabled()  # off before, off after
    finally:
        gc.enable()
        store.close()
