"""Index snapshots shared by the processes of one machine (app/vectors/snapshot.py):
opened memory-mapped, the same answers as a fresh load, and never stale or foreign."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.gallery import Gallery
from app.service.transfer import import_faces
from app.vectors.ann import AnnIndex
from app.vectors.index import ExactIndex, Partitions
from app.vectors.snapshot import SnapshotDir
from app.vectors.sync import GalleryChanges, GallerySync
from tests.gallery.test_gallery import add, new_faces
from tests.helpers import collections, delete_subject

SUBJECTS = 600


def gallery(path: Path) -> Gallery:
    """Two collections of subjects with two noisy faces each (a bulk import, then one
    face added the normal way)."""
    store = Gallery.open(f"sqlite:///{path}")
    collections(store).create(collection="other")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(SUBJECTS, 128)).astype(np.float32)
    faces = (
        np.repeat(centres, 2, axis=0)
        + rng.normal(size=(2 * SUBJECTS, 128)).astype(np.float32) * 0.1
    )
    ids = [f"person-{i // 2}-é" for i in range(2 * SUBJECTS)]
    for collection in ("default", "other"):
        import_faces(
            store,
            collection=collection,
            subject_ids=ids,
            embeddings=faces,
            encoder="fake",
            pipeline_version="v",
        )
    add(store, "late", 5)
    return store


def process(store: Gallery, root: Path, exact_below: int = 500) -> GallerySync:
    """What one worker process holds: AnnIndex partitions (IVF past ``exact_below``)
    kept in step with the store, with snapshots under ``root``."""
    indexes = Partitions(128, lambda dim: AnnIndex(dim, exact_below=exact_below, nprobe=8))
    snapshots = SnapshotDir(root, min_faces=100, exact_below=exact_below, nprobe=8)
    sync = GallerySync(GalleryChanges(store), indexes, ("fake",), snapshots)
    sync.sync()
    return sync


def exact(store: Gallery, collection: str) -> ExactIndex:
    rows = store.faces.load(dim=128, encoders=("fake",), collection=collection)
    index = ExactIndex(128)
    index.add(rows.face_ids, rows.subject_ids, rows.matrix)
    return index


def assert_answers_like_exact(sync: GallerySync, store: Gallery) -> None:
    for collection in ("default", "other"):
        truth = exact(store, collection)
        rows = store.faces.load(dim=128, encoders=("fake",), collection=collection)
        for i in range(0, len(rows.face_ids), 37):
            q = rows.matrix[i]
            want = truth.search(q, 3, exclude=rows.face_ids[i])
            got = sync.indexes.get(collection).search(q, 3, exclude=rows.face_ids[i])
            assert [h.subject_id for h in got[:1]] == [h.subject_id for h in want[:1]]
            assert got[0].distance == pytest.approx(want[0].distance, abs=1e-5)


@pytest.mark.parametrize("exact_below", [500, 10**9], ids=["ivf", "exact"])
def test_second_process_opens_the_first_ones_files_memory_mapped(
    tmp_path: Path, exact_below: int
) -> None:
    store = gallery(tmp_path / "g.db")
    first = process(store, tmp_path / "index", exact_below)
    (saved,) = (tmp_path / "index").glob("*-*/v*")
    second = process(store, tmp_path / "index", exact_below)
    for sync in (first, second):
        index = sync.indexes.get("default")
        assert isinstance(index, AnnIndex)
        # The rows are pages of the snapshot's files, shared, not a private copy.
        assert isinstance(index._vec, np.memmap)
        assert Path(index._vec.filename).parent.parent == saved
        assert len(index) == 2 * SUBJECTS + 1
        assert len(sync.indexes.get("other")) == 2 * SUBJECTS
        assert sync.version == store.changes.version()
        assert_answers_like_exact(sync, store)
    if exact_below == 500:
        assert len(first.indexes.get("default")._ivfs) == 2  # shared lists + private adds


def test_writes_after_the_snapshot_are_replayed_and_stay_private(tmp_path: Path) -> None:
    store = gallery(tmp_path / "g.db")
    first = process(store, tmp_path / "index")
    files_before = {
        p: p.read_bytes() for p in (tmp_path / "index").rglob("*.npy") if "vec" in p.name
    }
    new = add(store, "newcomer", 77)
    delete_subject(store, collection="default", subject_id="person-3-é")
    # A process started now opens the older snapshot and replays the two writes.
    second = process(store, tmp_path / "index")
    for sync in (first, second):
        sync.sync()
        index = sync.indexes.get("default")
        _, vector = store.faces.embedding(collection="default", face_id=new[0], encoders=("fake",))
        assert index.search(vector, 1)[0].subject_id == "newcomer"
        assert "person-3-é" not in {h.subject_id for h in index.search(vector, 2 * SUBJECTS)}
        assert_answers_like_exact(sync, store)
    # The writes changed no byte of the shared files (copy-on-write pages).
    assert files_before == {p: p.read_bytes() for p in files_before}


def test_a_snapshot_the_change_log_no_longer_reaches_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    (old,) = (tmp_path / "index").glob("*-*/v*")
    add(store, "newcomer", 77)
    now, reaching = store.changes.version(), store.changes.changes_since
    monkeypatch.setattr(  # the log is pruned up to now (the save's own check still reads)
        store.changes,
        "changes_since",
        lambda *, version: None if version < now else reaching(version=version),
    )
    sync = process(store, tmp_path / "index")
    (new,) = (tmp_path / "index").glob("*-*/v*")
    assert new != old and new.name == f"v{store.changes.version()}"
    assert sync.indexes.get("default").search(
        store.faces.load(dim=128, encoders=("fake",)).matrix[-1], 1
    )
    assert_answers_like_exact(sync, store)


def test_another_databases_snapshot_is_never_opened(tmp_path: Path) -> None:
    """Same folder, same gallery version, different database: its own snapshot."""
    one = gallery(tmp_path / "one.db")
    two = gallery(tmp_path / "two.db")
    add(two, "only-in-two", 99)
    add(one, "only-in-one", 98)
    assert one.changes.version() == two.changes.version()
    assert one.changes.instance() != two.changes.instance()
    process(one, tmp_path / "index")
    sync = process(two, tmp_path / "index")
    assert len(list((tmp_path / "index").glob("*-*"))) == 2
    subjects = {h.subject_id for h in sync.indexes.get("default").search(np.zeros(128), 10_000)}
    assert "only-in-two" in subjects and "only-in-one" not in subjects


def test_small_galleries_and_unwritable_folders_keep_a_private_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = gallery(tmp_path / "g.db")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        sync = process(store, blocked / "index")
    assert "not usable" in caplog.text
    assert not isinstance(sync.indexes.get("default")._vec, np.memmap)
    assert_answers_like_exact(sync, store)
    indexes = Partitions(128, lambda dim: AnnIndex(dim, exact_below=500))
    readonly = tmp_path / "ro"
    readonly.mkdir()
    snapshots = SnapshotDir(readonly, min_faces=10**9, exact_below=500)
    sync = GallerySync(GalleryChanges(store), indexes, ("fake",), snapshots)
    sync.sync()
    assert not isinstance(sync.indexes.get("default")._vec, np.memmap)
    assert not list(readonly.glob("*/v*"))
    assert_answers_like_exact(sync, store)


def test_a_broken_snapshot_is_not_opened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A truncated rows file (a full disk, a killed copy): the process says so and loads
    the index from the database (then saves it again) instead of never becoming ready."""
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    (vec,) = (tmp_path / "index").glob("*-*/v*/c0/vec.npy")
    vec.write_bytes(vec.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        sync = process(store, tmp_path / "index")
    assert "vec.npy changed since the snapshot was saved" in caplog.text
    assert_answers_like_exact(sync, store)


def _backup(src: Path, dst: Path) -> None:
    import sqlite3

    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def test_a_snapshot_newer_than_a_restored_backup_is_rebuilt(tmp_path: Path) -> None:
    """Issue 25: back up, enroll carol, restart (snapshot saved), restore the backup,
    start: identify still returned carol, whom GET and DELETE could not see; erin,
    enrolled after the restore, was never found after a restart."""
    db = tmp_path / "g.db"
    store = gallery(db)
    process(store, tmp_path / "index")
    _backup(db, tmp_path / "backup.db")
    add(store, "carol", 41)
    add(store, "dave", 42)
    process(store, tmp_path / "index")  # a restart: the snapshot now has carol
    store.close()
    _backup(tmp_path / "backup.db", db)  # restore
    restored = Gallery.open(f"sqlite:///{db}")
    assert (
        restored.changes.changes_since(version=restored.changes.version() + 2) is None
    )  # not "nothing"
    sync = process(restored, tmp_path / "index")
    carol = new_faces(41)[0].embedding
    hits = sync.indexes.get("default").search(carol, 1)
    assert hits[0].subject_id != "carol"
    add(restored, "erin", 43)
    add(restored, "fay", 44)  # the restored database reaches the snapshot's version
    sync = process(restored, tmp_path / "index")  # a restart after the restore
    subjects = {h.subject_id for h in sync.indexes.get("default").search(carol, 10_000)}
    assert {"erin", "fay"} <= subjects and not {"carol", "dave"} & subjects
    assert_answers_like_exact(sync, restored)


def test_a_snapshot_file_rewritten_in_place_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rewriting subj.npy at the same size made identify report carol for two other
    people; the files' sums are checked before a snapshot is opened."""
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    (subj,) = (tmp_path / "index").glob("*-*/v*/c0/subj.npy")
    raw = bytearray(subj.read_bytes())
    raw[-4096:] = bytes(reversed(raw[-4096:]))  # same size, other rows' subjects
    raw[200:208] = bytes(8)
    subj.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        sync = process(store, tmp_path / "index")
    assert "changed since the snapshot was saved" in caplog.text
    assert_answers_like_exact(sync, store)
    (again,) = (tmp_path / "index").glob("*-*/v*/c0/subj.npy")
    assert again.read_bytes() != bytes(raw)  # written afresh


def test_a_snapshot_manifest_edited_to_match_is_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever rewrites a file and its sum in the manifest still lacks the database's
    record of the manifest."""
    import hashlib
    import json

    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    (folder,) = (tmp_path / "index").glob("*-*/v*")
    meta = json.loads((folder / "snapshot.json").read_text())
    subj = folder / "c0" / "subj.npy"
    raw = bytearray(subj.read_bytes())
    raw[200:208] = bytes(8)
    subj.write_bytes(bytes(raw))
    meta["files"]["c0/subj.npy"] = hashlib.sha256(bytes(raw)).hexdigest()
    (folder / "snapshot.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        sync = process(store, tmp_path / "index")
    assert "its manifest changed" in caplog.text
    assert_answers_like_exact(sync, store)


@pytest.mark.parametrize("change", ["a later piece", "appended", "truncated"])
def test_a_change_in_any_piece_of_a_file_is_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Files are checked in pieces, on every core (issue 41): a change past the first
    piece, or a file grown or cut, is still a changed file."""
    monkeypatch.setattr("app.vectors.snapshot.PIECE_BYTES", 4096)
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    (vec,) = (tmp_path / "index").glob("*-*/v*/c0/vec.npy")
    raw = bytearray(vec.read_bytes())
    assert len(raw) > 10 * 4096
    if change == "a later piece":
        raw[9 * 4096 + 5] ^= 0xFF
    elif change == "appended":
        raw += bytes(4096)
    else:
        del raw[-4096:]
    vec.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        sync = process(store, tmp_path / "index")
    assert "c0/vec.npy changed since the snapshot was saved" in caplog.text
    assert_answers_like_exact(sync, store)


def test_a_manifest_of_whole_file_sums_is_still_checked(tmp_path: Path) -> None:
    """Snapshots saved before pieces listed one sha256 per file: still opened (no rebuild
    after an upgrade), and still refused when a file changed."""
    import hashlib

    from app.vectors.snapshot import _changed_file

    (tmp_path / "a").write_bytes(b"vectors")
    whole = {"a": hashlib.sha256(b"vectors").hexdigest()}
    assert _changed_file(tmp_path, whole) is None
    (tmp_path / "a").write_bytes(b"vectorz")
    assert _changed_file(tmp_path, whole) == "a"
    assert _changed_file(tmp_path, {"a": {"bytes": 7, "sha256": ["0" * 64]}}) == "a"
    assert _changed_file(tmp_path, {"missing": {"bytes": 0, "sha256": []}}) == "missing"


def _memory(store: Gallery, root: Path, *, background: bool):  # type: ignore[no-untyped-def]
    from app.vectors.memory import MemorySearch
    from app.vectors.snapshot import SnapshotDir as Dir

    return MemorySearch(
        store,
        dim=128,
        encoders=frozenset({"fake"}),
        wait_seconds=30,
        factory=lambda dim: AnnIndex(dim, exact_below=500, nprobe=8),
        snapshots=Dir(root, min_faces=100, exact_below=500, nprobe=8),
        background=background,
    )


def _held_back_saves(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Snapshot saves wait until the returned event is set."""
    import threading

    from app.vectors.snapshot import SnapshotDir as Dir

    release = threading.Event()
    real_save = Dir.save

    def slow_save(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert release.wait(30)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Dir, "save", slow_save)
    return release


def _saver_done(search) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    assert search.ready.wait(30)
    deadline = time.monotonic() + 60
    while any(t.name == "index-save" for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_cold_start_answers_before_its_snapshot_is_saved_then_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No snapshot (a restored database, a new replica): identify answers once the rows
    are in memory (exactly, while the IVF lists train), not after the training and the
    save (issue 41); the snapshot is saved on a thread, then opened in place of the
    private index, with the writes made meanwhile."""

    store = gallery(tmp_path / "g.db")
    release = _held_back_saves(monkeypatch)
    search = _memory(store, tmp_path / "index", background=True)
    assert search.ready.wait(30)  # ready while the save waits
    assert not list((tmp_path / "index").glob("*-*/v*/snapshot.json"))
    late = add(store, "late-2", 7)  # a write while the snapshot is being saved
    assert_answers_like_exact(search.gallery, store)
    release.set()
    _saver_done(search)
    assert list((tmp_path / "index").glob("*-*/v*/snapshot.json"))
    index = search.indexes.get("default")
    assert isinstance(index, AnnIndex) and isinstance(index._vec, np.memmap)  # shared pages
    search.gallery.sync()
    assert_answers_like_exact(search.gallery, store)
    hits, _ = search.search("default", exact(store, "default").subject_embeddings("late-2")[0], 1)
    assert hits[0].face_id == late[0]


@pytest.mark.parametrize("background", [False, True], ids=["saved-first", "saved-later"])
def test_a_face_deleted_while_a_snapshot_is_saved_leaves_no_copy_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    """The deletion's erasure (issue 27) runs over the snapshots there are; one still
    being written from rows read before the delete held the embedding. A save that a
    delete overlapped is erased (and, in the background, tried again)."""
    from app.vectors.snapshot import SnapshotDir as Dir
    from app.vectors.snapshot import erase_rows
    from tests.privacy.test_erasure import files_holding

    store = gallery(tmp_path / "g.db")
    root = tmp_path / "index"
    needle = exact(store, "default").subject_embeddings("person-3-é")[0].astype("<f4").tobytes()
    real_save = Dir.save
    deleted: list[str] = []

    def save_with_a_delete(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not deleted:  # the service's delete and its erasure, as the save begins
            deleted.extend(delete_subject(store, collection="default", subject_id="person-3-é")[0])
            erase_rows(root, deleted)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Dir, "save", save_with_a_delete)
    search = _memory(store, root, background=background)
    _saver_done(search)
    # Collection "other" holds the same embeddings (c1): the deleted face was default's.
    assert deleted and [f for f in files_holding(root, needle) if "/c0/" in f] == []
    # Saved first: the one save is erased (the next start saves one). Later: saved again.
    assert bool(list(root.glob("*-*/v*/snapshot.json"))) == background
    search.gallery.sync()
    hits, _ = search.search("default", np.frombuffer(needle, dtype="<f4"), 1)
    assert hits[0].subject_id != "person-3-é"
    assert_answers_like_exact(search.gallery, store)


def test_a_full_reload_while_a_snapshot_is_saved_neither_waits_nor_is_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saver holds the snapshots' lock, then takes the sync's lock to swap the saved
    snapshot in; a full reload meanwhile (a rebuild, a pruned change log) held the sync's
    lock and waited for the snapshots' lock: a deadlock. It loads privately now, and the
    saver leaves the newer indexes in place."""
    import threading

    store = gallery(tmp_path / "g.db")
    release = _held_back_saves(monkeypatch)
    search = _memory(store, tmp_path / "index", background=True)
    assert search.ready.wait(30)
    rebuilt = threading.Thread(target=search.rebuild, daemon=True)
    rebuilt.start()
    rebuilt.join(20)
    assert not rebuilt.is_alive()  # done while the save still waits
    newest = search.indexes.get("default")
    release.set()
    _saver_done(search)
    assert search.indexes.get("default") is newest  # not swapped for the older snapshot
    assert_answers_like_exact(search.gallery, store)


def test_a_save_cut_short_leaves_no_embedding_behind(tmp_path: Path) -> None:
    """A crash or kill during a save leaves a tmp- folder of plaintext rows that no
    erasure looks for: the next start, and any erasure while no save runs, overwrites it
    with zeros and removes it."""
    from app.vectors.snapshot import erase_rows
    from tests.privacy.test_erasure import files_holding

    store = gallery(tmp_path / "g.db")
    root = tmp_path / "index"
    process(store, root)
    (saved,) = root.glob("*-*/v*")
    for name in ("tmp-1-1", "tmp-2-2"):
        shutil.copytree(saved, saved.parent / name)
    needle = np.load(saved / "c0" / "vec.npy")[0].tobytes()
    erase_rows(root, ["no-such-face"])  # a delete elsewhere, no save under way
    assert not list(root.glob("*/tmp-*"))
    held = files_holding(root, needle)  # the saved snapshot's two collections only
    assert held and all(f.startswith(str(saved.relative_to(root))) for f in held)
    shutil.copytree(saved, saved.parent / "tmp-3-3")
    process(store, root)  # the next start
    assert not list(root.glob("*/tmp-*"))


def test_open_trusts_the_manifest_the_database_checked_not_the_file_again(
    tmp_path: Path,
) -> None:
    """Between the database's check of snapshot.json and the open, the file could be
    swapped for one that lists no files (nothing then checked)."""
    import dataclasses
    import json

    from app.vectors.snapshot import SnapshotMismatch

    store = gallery(tmp_path / "g.db")
    root = tmp_path / "index"
    sync = process(store, root)
    snapshots = sync.snapshots
    assert snapshots is not None
    found = snapshots.latest(store.changes.instance(), ("fake",), 128)
    assert found is not None and found.manifest
    (found.folder / "c0" / "subj.npy").write_bytes(b"changed")
    meta = json.loads(found.manifest)
    meta["files"] = {}
    (found.folder / "snapshot.json").write_text(json.dumps(meta))
    with pytest.raises(SnapshotMismatch, match="c0/subj.npy changed"):
        snapshots.open(found)
    with pytest.raises(SnapshotMismatch, match="changed since it was checked"):
        snapshots.open(dataclasses.replace(found, manifest=b""))


def test_a_write_applied_to_indexes_swapped_meanwhile_is_left_to_the_replay(
    tmp_path: Path,
) -> None:
    store = gallery(tmp_path / "g.db")
    sync = process(store, tmp_path / "index")
    version, epoch = sync.version, sync.indexes.epoch
    sync.indexes.replace(sync.indexes.parts())  # an adopted snapshot, a reload
    sync.advance(version + 1, epoch)
    assert sync.version == version
    sync.advance(version + 1, sync.indexes.epoch)
    assert sync.version == version + 1


def _counted_hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pieces hashed from now on (their lengths)."""
    from app.vectors import snapshot

    hashed: list[int] = []
    original = snapshot._hash_piece

    def counted(fd: int, start: int, length: int) -> str:
        hashed.append(length)
        return original(fd, start, length)

    monkeypatch.setattr(snapshot, "_hash_piece", counted)
    return hashed


def _saved_and_prehashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gallery:
    """A gallery whose snapshot (in 4 KB pieces) was saved, then pre-hashed to the end."""
    from app.vectors import snapshot

    monkeypatch.setattr(snapshot, "PIECE_BYTES", 4096)
    monkeypatch.setattr(snapshot, "PREHASH_SETTLED_SECONDS", 0.0)
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    thread = snapshot.prehash(tmp_path / "index")
    assert thread is not None
    thread.join()
    return store


def test_a_restart_opens_the_snapshot_prehash_hashed_without_hashing_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`faceverify serve` hashes the snapshot while it imports and loads its models
    (issue 41: a restart's identify waited ~0.6 s for it after them). The open then
    finds every piece hashed, checks them against the manifest, and hashes none again."""
    from app.vectors import snapshot

    store = _saved_and_prehashed(tmp_path, monkeypatch)
    assert len(snapshot._PREHASHED) > 10
    hashed = _counted_hashing(monkeypatch)
    sync = process(store, tmp_path / "index")
    assert hashed == []
    assert isinstance(sync.indexes.get("default")._vec, np.memmap)  # the snapshot, opened
    assert_answers_like_exact(sync, store)
    assert snapshot._PREHASHED == {} and snapshot._PREHASH is None  # for that open alone


@pytest.mark.parametrize("mtime", ["new mtime", "mtime set back"])
def test_a_file_changed_after_prehash_is_still_found(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, mtime: str
) -> None:
    """A file rewritten in place at the same size between the pre-hash and the open,
    even with its mtime set back: its ctime changed, so its pieces are hashed again
    and the change is found."""
    import os
    import time

    from app.vectors import snapshot

    monkeypatch.setattr(snapshot, "PIECE_BYTES", 4096)
    monkeypatch.setattr(snapshot, "PREHASH_SETTLED_SECONDS", 0.05)
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    time.sleep(0.1)  # settled: written before the pre-hash's margin
    thread = snapshot.prehash(tmp_path / "index")
    assert thread is not None
    thread.join()
    assert snapshot._PREHASHED  # hashed ahead, and remembered
    (subj,) = (tmp_path / "index").glob("*-*/v*/c0/subj.npy")
    before = subj.stat()
    raw = bytearray(subj.read_bytes())
    raw[200:208] = bytes(reversed(raw[200:208]))
    with subj.open("r+b") as fh:  # in place: the same inode and size
        fh.write(bytes(raw))
    if mtime == "mtime set back":
        os.utime(subj, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert subj.stat().st_ino == before.st_ino
    with caplog.at_level(logging.WARNING):
        sync = process(store, tmp_path / "index")
    assert "c0/subj.npy changed since the snapshot was saved" in caplog.text
    assert_answers_like_exact(sync, store)


def test_a_snapshot_written_just_before_the_prehash_is_hashed_once_it_settles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel stamps ctimes with a coarse clock: a second write within the same tick
    (a second on some file systems) keeps the ctime. So the pre-hash of a snapshot
    changed less than PREHASH_SETTLED_SECONDS ago (an import saved it a moment before
    `serve`) waits, and hashes when the open comes, as part of the open's check: each
    piece once."""
    import time

    from app.vectors import snapshot

    monkeypatch.setattr(snapshot, "PIECE_BYTES", 4096)
    monkeypatch.setattr(snapshot, "PREHASH_SETTLED_SECONDS", 3600.0)
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    hashed = _counted_hashing(monkeypatch)
    thread = snapshot.prehash(tmp_path / "index")
    assert thread is not None
    time.sleep(0.2)
    assert hashed == [] and thread.is_alive()  # waiting for the files to settle
    sync = process(store, tmp_path / "index")
    thread.join(5)
    assert not thread.is_alive()
    (manifest,) = (tmp_path / "index").glob("*-*/v*/snapshot.json")
    files = json.loads(manifest.read_text())["files"]
    assert len(hashed) == sum(-(-int(f["bytes"]) // 4096) for f in files.values())
    assert isinstance(sync.indexes.get("default")._vec, np.memmap)
    assert_answers_like_exact(sync, store)


def test_serve_prehashes_only_where_a_snapshot_can_be_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No pre-hash with encryption at rest (no snapshot is ever kept: a leftover one is
    erased, not read), with pgvector, or with the exact index; and none without a
    snapshot to hash."""
    import base64

    from app.cli import _prehash_snapshot
    from app.settings import Settings
    from app.vectors import snapshot

    roots: list[Path] = []
    monkeypatch.setattr(snapshot, "prehash", roots.append)
    key = base64.b64encode(bytes(range(32))).decode()
    for refused in (
        {"encryption_key": key},
        {"vector_search": "pgvector"},
        {"memory_index": "exact"},
    ):
        _prehash_snapshot(Settings(data_dir=tmp_path, **refused))
    assert roots == []
    _prehash_snapshot(Settings(data_dir=tmp_path))
    assert roots == [tmp_path / "index"]
    monkeypatch.undo()
    assert snapshot.prehash(tmp_path / "index") is None  # nothing saved there yet


def test_an_open_before_the_prehash_ends_hashes_the_pieces_left_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-hash runs on one thread (the imports hold another core). At 10M faces
    (~6 GB) it is not done when the open comes: the open hashes the pieces it has not
    reached, beside it, rather than wait for one thread to hash them all."""
    import threading

    from app.vectors import snapshot

    monkeypatch.setattr(snapshot, "PIECE_BYTES", 4096)
    monkeypatch.setattr(snapshot, "PREHASH_SETTLED_SECONDS", 0.0)
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    (manifest,) = (tmp_path / "index").glob("*-*/v*/snapshot.json")
    files = json.loads(manifest.read_text())["files"]
    total = sum(-(-int(f["bytes"]) // 4096) for f in files.values())
    release, by_open = threading.Event(), []
    original = snapshot._hash_piece

    def slow_prehash(fd: int, start: int, length: int) -> str:
        if threading.current_thread().name == "snapshot-prehash":
            assert release.wait(30)  # stuck on its first piece until the open did the rest
        else:
            by_open.append(length)
            if len(by_open) == total - 1:
                release.set()
        return original(fd, start, length)

    monkeypatch.setattr(snapshot, "_hash_piece", slow_prehash)
    monkeypatch.setattr(snapshot, "usable_cpus", lambda: 2)  # the open's thread helps
    thread = snapshot.prehash(tmp_path / "index")
    assert thread is not None
    sync = process(store, tmp_path / "index")
    thread.join()
    assert len(by_open) == total - 1
    assert isinstance(sync.indexes.get("default")._vec, np.memmap)
    assert_answers_like_exact(sync, store)


def _planted_snapshot(root: Path, files: dict[str, bytes], names: list[str]) -> Path:
    """A snapshot folder no database registered, newer than the others, whose manifest
    lists ``names`` (of 4 KB pieces)."""
    folder = root / "planted-instance" / "v99"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    listed = {name: {"bytes": 4096, "sha256": ["0" * 64]} for name in names}
    (folder / "snapshot.json").write_text(json.dumps({"format": 3, "files": listed}))
    return folder


def test_the_prehash_reads_only_files_inside_the_snapshot_folder(tmp_path: Path) -> None:
    """No database vouches for a manifest when the pre-hash reads it: names outside its
    folder (absolute, ``..``, a symbolic link out) are never read."""
    from app.vectors import snapshot

    outside = tmp_path / "outside.bin"
    outside.write_bytes(bytes(8192))
    folder = _planted_snapshot(tmp_path / "index", {"inside.bin": bytes(8192)}, [])
    (folder / "link.bin").symlink_to(outside)
    listed = [str(outside), "../../../outside.bin", "link.bin", "inside.bin", "missing.bin"]
    (folder / "snapshot.json").write_text(
        json.dumps({"files": {n: {"bytes": 8192, "sha256": []} for n in listed}})
    )
    thread = snapshot.prehash(tmp_path / "index")
    assert thread is not None and snapshot._PREHASH is not None
    pieces = snapshot._PREHASH[0]
    assert {path.name for path, _ in pieces._pieces} == {"inside.bin"}
    pieces.checking.set()
    thread.join()
    snapshot._forget_prehash()


def test_an_open_of_another_snapshot_stops_the_prehash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-hash takes the newest snapshot folder; the database may vouch for
    another. That open does not help hash the other's files, nor wait for them: the
    pre-hash stops after the piece in hand."""
    import time

    from app.vectors import snapshot

    monkeypatch.setattr(snapshot, "PIECE_BYTES", 4096)
    monkeypatch.setattr(snapshot, "PREHASH_SETTLED_SECONDS", 0.0)
    store = gallery(tmp_path / "g.db")
    process(store, tmp_path / "index")
    _planted_snapshot(tmp_path / "index", {"big.bin": bytes(4096 * 200)}, ["big.bin"])
    planted: list[int] = []
    original = snapshot._hash_piece

    def slow(fd: int, start: int, length: int) -> str:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("big.bin"):
            planted.append(start)
            time.sleep(0.02)  # 200 pieces: 4 s in all
        return original(fd, start, length)

    monkeypatch.setattr(snapshot, "_hash_piece", slow)
    thread = snapshot.prehash(tmp_path / "index")
    assert thread is not None
    sync = process(store, tmp_path / "index")
    assert not thread.is_alive()
    assert 0 < len(planted) < 100
    assert isinstance(sync.indexes.get("default")._vec, np.memmap)
    assert_answers_like_exact(sync, store)


def test_a_digest_hashed_long_before_the_open_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is of the content as it was when hashed: an open that comes long after
    the pre-hash (past PREHASH_MAX_AGE_SECONDS) hashes the files again."""
    from app.vectors import snapshot

    store = _saved_and_prehashed(tmp_path, monkeypatch)
    assert snapshot._PREHASHED
    monkeypatch.setattr(snapshot, "PREHASH_MAX_AGE_SECONDS", 0.0)
    hashed = _counted_hashing(monkeypatch)
    process(store, tmp_path / "index")
    assert len(hashed) > 10
