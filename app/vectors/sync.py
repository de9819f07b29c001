"""Keeping a :class:`~app.vectors.index.VectorIndex` in step with the store.

The store logs every write with a gallery version (app/gallery/changes.py). A
:class:`GallerySync` remembers the version its index reflects and replays the changes
since, so writes made by other threads or processes (replicas on one PostgreSQL) reach
this process's index before it answers. It works with any VectorIndex and any
:class:`ChangeSource`, as httpx's client works with any transport.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from app.gallery import Change, EmbeddingRows, Gallery
from app.gallery.faces import collector_paused
from app.vectors.index import Partitions
from app.vectors.snapshot import Held, Snapshot, SnapshotDir, SnapshotMismatch

log = logging.getLogger("faceverify.gallery")

# Changes after which a snapshot being written may hold a deleted face's embedding.
ERASING = frozenset({"delete_face", "delete_subject", "delete_collection", "reload_collection"})
# Saves a background saver tries before it leaves the snapshot to the next start.
SAVE_TRIES = 3


class ChangeSource(Protocol):
    """What a GallerySync reads: the store's version, change log and embeddings."""

    def version(self) -> int: ...

    def instance(self) -> str: ...

    def register_snapshot(self, *, token: str, version: int, digest: str) -> None: ...

    def snapshot_registered(self, *, token: str) -> tuple[int, str] | None: ...

    def changes_since(self, *, version: int) -> list[Change] | None: ...

    def load_embeddings(
        self,
        *,
        dim: int,
        face_ids: list[str] | None = None,
        encoders: Collection[str] = (),
        collection: str | None = None,
    ) -> EmbeddingRows: ...


@dataclass
class _Reload:
    """A collection's reload in the background: ``done`` once its index is current;
    ``again`` when another import came while it loaded."""

    done: threading.Event = field(default_factory=threading.Event)
    again: bool = False


class GallerySync:
    """Replays ``source``'s change log into ``indexes`` (one VectorIndex a collection).

    Args:
        source: the store.
        indexes: the indexes to keep current; they hold only faces whose stored
            ``encoder`` is in ``encoders`` (embeddings of other models are never loaded,
            so never compared).
        encoders: the stored encoder names the indexes accept.
        snapshots: where full loads are saved and opened memory-mapped, shared by the
            processes of this machine (app/vectors/snapshot.py); None: not at all.
        save_in_background: a full load that finds no snapshot answers at once (an
            AnnIndex searches exactly while its IVF lists train) and saves its snapshot
            on a thread, then opens it (issue 41: identify waited for the training and
            the save, 55 s at 1M faces). Otherwise it saves before it answers.
    """

    def __init__(
        self,
        source: ChangeSource,
        indexes: Partitions,
        encoders: Collection[str],
        snapshots: SnapshotDir | None = None,
        *,
        save_in_background: bool = False,
    ):
        self.source = source
        self.indexes = indexes
        self.encoders = frozenset(encoders)
        self.snapshots = snapshots
        self.save_in_background = save_in_background
        # A snapshot being saved on a thread of this process, which holds the snapshots'
        # lock: a full reload meanwhile loads privately instead of waiting for that lock
        # while holding self._lock, which the saver takes at its end (a deadlock).
        self._saving = False
        self.version = -1
        self._lock = threading.Lock()
        # Collections being reloaded in the background (after an import).
        self._reloading: dict[str, _Reload] = {}

    def sync(self) -> bool:
        """Bring the index up to the store's version. Cheap when nothing changed (one
        query). Returns True if anything was applied."""
        current = self.source.version()
        if current == self.version:
            return False
        with self._lock:
            if current == self.version:
                return False
            changes = self.source.changes_since(version=self.version) if self.version >= 0 else None
            if changes is None:
                self.version = self._reload(current)
                return True
            self._replay(changes)
            self.version = max([current, *(c.version for c in changes)])
            return True

    def _reload(self, current: int) -> int:
        """Everything afresh: from a snapshot and the changes since, if there is one the
        change log still reaches; else from the store (then saved as a snapshot). Returns
        the version the indexes now reflect."""
        if self.snapshots is None or self._saving:
            self._load_all()
            return current
        try:
            return self._reload_shared(current)
        except (OSError, ValueError) as exc:  # unwritable folder, broken files: private
            log.warning(
                "index snapshots in %s are not usable (%s); loading a private index",
                self.snapshots.root,
                exc,
            )
            self._load_all()
            return current

    def _reload_shared(self, current: int) -> int:
        assert self.snapshots is not None
        instance, dim = self.source.instance(), self.indexes.dim
        held: Held | None = self.snapshots.hold()
        try:
            found = self.snapshots.latest(instance, self.encoders, dim)
            if found is not None and not self._ours(found):
                found = None
            changes = self.source.changes_since(version=found.version) if found else None
            if found is not None and changes is not None:
                try:
                    opened = self.snapshots.open(found)
                except SnapshotMismatch as exc:
                    log.warning("index snapshot %s is rebuilt: %s", found.folder, exc)
                else:
                    self.indexes.replace(opened)
                    self._replay(changes)
                    return max([found.version, *(c.version for c in changes)])
            self._load_all()
            if self.save_in_background:
                self._saving = True
                threading.Thread(
                    target=self._save_later,
                    args=(current, held, self.indexes.epoch),
                    name="index-save",
                    daemon=True,
                ).start()
                held = None  # the thread releases it once the snapshot is saved
                return current
            saved = self._save_checked(current)
            if saved is not None:  # this process too reads the shared pages
                self.indexes.replace(self.snapshots.open(saved))
            return current
        finally:
            if held is not None:
                held.release()

    def _save_later(self, version: int, held: Held, epoch: int) -> None:
        """The snapshot of the indexes loaded at ``version`` (``epoch``: the partitions'
        then), saved while they answer, then opened in their place (the pages shared with
        the other processes); the snapshots' lock released at the end."""
        try:
            for _ in range(SAVE_TRIES):
                saved = self._save_checked(version)
                if saved is not None:
                    self._adopt(saved, epoch)
                    return
                caught_up = self._catch_up(version, epoch)  # the deletes applied, again
                if caught_up is None:
                    break
                version = caught_up
            log.warning("no index snapshot saved this time; the next start saves one")
        except Exception as exc:  # a full disk, say: this process keeps its own index
            log.warning("saving the index snapshot failed (%s); the next start builds it", exc)
        finally:
            held.release()
            self._saving = False

    def _catch_up(self, loaded: int, epoch: int) -> int | None:
        """The changes since this process's version replayed (as :meth:`sync` would, but
        never a full reload: the saver holds the snapshots' lock that one would take);
        the version the indexes now hold at least. None where a save would not be of
        what the store holds: the log no longer reaches back, or a collection is being
        reloaded (an import: its index is the old one until the reload swaps it in) or
        was since (the partitions were swapped)."""
        with self._lock:
            since = max(self.version, loaded)  # the start-up sync may not have noted it yet
            current = self.source.version()
            changes = self.source.changes_since(version=since)
            if changes is None:
                return None
            self._replay(changes)
            self.version = max([current, since, *(c.version for c in changes)])
            if self._reloading or self.indexes.epoch != epoch:
                return None
            return self.version

    def _save_checked(self, version: int) -> Snapshot | None:
        """The indexes saved and registered as the snapshot of ``version`` (they hold
        at least that), unless a face was deleted since: then the files may hold it (its
        erasure ran before they were written), and they are erased too."""
        assert self.snapshots is not None
        saved = self.snapshots.save(
            self.indexes.parts(),
            instance=self.source.instance(),
            encoders=self.encoders,
            dim=self.indexes.dim,
            version=version,
            register=lambda s: self.source.register_snapshot(
                token=s.token, version=s.version, digest=s.digest
            ),
        )
        if saved is None:
            return None
        changes = self.source.changes_since(version=version)
        if changes is None or any(c.kind in ERASING for c in changes):
            self.snapshots.discard(saved)
            log.info(
                "index snapshot %s erased: faces were deleted or reloaded as it was saved "
                "(or the change log no longer reaches its version)",
                saved.folder,
            )
            return None
        return saved

    def _adopt(self, saved: Snapshot, epoch: int) -> None:
        """The saved snapshot in place of the private indexes it was written from, with
        the changes since replayed into it before any search sees it; not when those
        indexes were swapped meanwhile (a collection reloaded, a full reload): the
        snapshot does not hold what they do."""
        assert self.snapshots is not None
        try:
            staged = self.indexes.like(self.snapshots.open(saved))
        except (OSError, ValueError) as exc:  # erased meanwhile (a delete): keep ours
            log.info("index snapshot %s not opened (%s); keeping this process's", saved, exc)
            return
        with self._lock:
            changes = self.source.changes_since(version=saved.version)
            if changes is None or self._reloading or self.indexes.epoch != epoch:
                return
            self._replay(changes, staged)
            self.indexes.replace(staged.parts())

    def save_snapshot(self) -> Snapshot | None:
        """Load every face from the store and save the indexes as this database's
        registered snapshot of its current version, for the next start to open (issue
        41: `gallery import` leaves one behind, so the first start after an import loads
        in seconds). None: no snapshot folder, too few faces for one, or a face deleted
        while it was written (it is erased then)."""
        if self.snapshots is None:
            return None
        with self.snapshots.locked():
            return self._load_and_save(self.source.version())

    def _load_and_save(self, version: int) -> Snapshot | None:
        """Every face from the store into the indexes, saved (and registered with the
        database) as the snapshot of ``version``; the snapshots' lock is held."""
        self._load_all()
        return self._save_checked(version)

    def _ours(self, snapshot: Snapshot) -> bool:
        """Whether this database registered ``snapshot`` (token, version and manifest):
        one saved from another history (a backup restored since) is not."""
        registered = self.source.snapshot_registered(token=snapshot.token)
        if registered == (snapshot.version, snapshot.digest):
            return True
        log.warning(
            "index snapshot %s is not this database's (%s); rebuilding it",
            snapshot.folder,
            "unknown to it" if registered is None else "its manifest changed",
        )
        return False

    def _load_all(self) -> None:
        with collector_paused():  # the faces' ids and names are millions of objects
            self._add_all()

    def _add_all(self) -> None:
        rows = self.source.load_embeddings(dim=self.indexes.dim, encoders=self.encoders)
        self.indexes.clear()
        if len(set(rows.collections)) == 1:  # the common case: no copy of the rows
            self.indexes.writable(rows.collections[0]).add(
                rows.face_ids, rows.subject_ids, rows.matrix
            )
            return
        by_collection: dict[str, list[int]] = {}
        for i, collection in enumerate(rows.collections):
            by_collection.setdefault(collection, []).append(i)
        for collection, picked in by_collection.items():
            self.indexes.writable(collection).add(
                [rows.face_ids[i] for i in picked],
                [rows.subject_ids[i] for i in picked],
                rows.matrix[picked],
            )

    def _reload_collection(self, collection: str) -> None:
        """One collection afresh from the store (after an import), on a thread of its
        own: a search in another collection neither waits for it nor pays for it (issue
        25: the first identify in ``default`` after a 1.2M-face import into another
        collection took 57.6 s). A search in this one waits (:meth:`wait_for`)."""
        reload = self._reloading.get(collection)
        if reload is not None:
            reload.again = True  # another import while it loads: load once more
            return
        self._reloading[collection] = _Reload()
        threading.Thread(
            target=self._reload_in_background,
            args=(collection,),
            name=f"reload-{collection}",
            daemon=True,
        ).start()

    def _reload_in_background(self, collection: str) -> None:
        while True:
            try:
                if self._reload_once(collection):
                    return
            except Exception as exc:  # the database is down, say: try again, say so
                log.warning("reloading collection %r failed (%s); retrying in 1 s", collection, exc)
                time.sleep(1.0)

    def _reload_once(self, collection: str) -> bool:
        """Load the collection as the store has it now, then swap it in and replay what
        changed in it meanwhile. True when it is current (no newer import asked again)."""
        reload = self._reloading[collection]
        reload.again = False
        start = self.source.version()
        rows = self.source.load_embeddings(
            dim=self.indexes.dim, encoders=self.encoders, collection=collection
        )
        index = self.indexes.fresh()
        if rows.face_ids:
            index.add(rows.face_ids, rows.subject_ids, rows.matrix)
        with self._lock:
            changes = self.source.changes_since(version=start)
            if changes is None:  # the log moved past: a full reload will come
                changes = []
                self.version = -1
            self.indexes.put(collection, index)
            self._replay(
                [c for c in changes if c.collection == collection and c.kind != "reload_collection"]
            )
            if reload.again:
                return False
            del self._reloading[collection]
        reload.done.set()
        log.info("collection %r reloaded: %d faces", collection, len(index))
        return True

    def wait_for(self, collection: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s while ``collection`` is reloaded; False if it still
        is (the caller answers 'retry shortly')."""
        reload = self._reloading.get(collection)
        return reload is None or reload.done.wait(timeout)

    def _replay(self, changes: list[Change], into: Partitions | None = None) -> None:
        indexes = self.indexes if into is None else into
        added = [c.face_id for c in changes if c.kind == "add_face" and c.face_id]
        fetched = (
            self.source.load_embeddings(dim=indexes.dim, face_ids=added, encoders=self.encoders)
            if added
            else None
        )
        row_of = {fid: i for i, fid in enumerate(fetched.face_ids)} if fetched else {}
        for change in changes:
            if change.kind == "add_face" and fetched and change.face_id in row_of:
                i = row_of[change.face_id]
                indexes.writable(change.collection).add(
                    [change.face_id], [change.subject_id], fetched.matrix[i : i + 1]
                )
            elif change.kind == "delete_face" and change.face_id:
                indexes.get(change.collection).remove_faces([change.face_id])
            elif change.kind == "delete_subject":
                indexes.get(change.collection).remove_subject(change.subject_id)
            elif change.kind == "delete_collection":
                indexes.drop(change.collection)
            elif change.kind == "reload_collection":
                self._reload_collection(change.collection)
            # create_collection: nothing to do (an index is made on the first face)

    def advance(self, version: int, epoch: int | None = None) -> None:
        """Record that this process applied its own write of ``version`` to the index
        itself, when it was the next one; otherwise leave the gap for :meth:`sync`. Never
        waits: while a sync holds the lock (a full load can take seconds), the write is
        simply replayed by the next sync (replaying is harmless). ``epoch``: the
        partitions' before the write was applied; if they were replaced since (a saved
        snapshot adopted, a collection reloaded), it may have gone to the old ones, and
        is left to the replay too."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if version == self.version + 1 and epoch in (None, self.indexes.epoch):
                self.version = version
        finally:
            self._lock.release()


class GalleryChanges:
    """The gallery as a GallerySync reads it (app/vectors/sync.py ChangeSource)."""

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def version(self) -> int:
        return self.gallery.changes.version()

    def instance(self) -> str:
        return self.gallery.changes.instance()

    def register_snapshot(self, *, token: str, version: int, digest: str) -> None:
        self.gallery.changes.register_snapshot(token=token, version=version, digest=digest)

    def snapshot_registered(self, *, token: str) -> tuple[int, str] | None:
        return self.gallery.changes.snapshot_registered(token=token)

    def changes_since(self, *, version: int) -> list[Change] | None:
        return self.gallery.changes.changes_since(version=version)

    def load_embeddings(
        self,
        *,
        dim: int,
        face_ids: list[str] | None = None,
        encoders: Collection[str] = (),
        collection: str | None = None,
    ) -> EmbeddingRows:
        return self.gallery.faces.load(
            dim=dim, face_ids=face_ids, encoders=encoders, collection=collection
        )
