"""Keeping a :class:`~app.gallery.index.VectorIndex` in step with the store.

The store logs every write with a gallery version (app/gallery/store.py). A
:class:`GallerySync` remembers the version its index reflects and replays the changes
since, so writes made by other threads or processes (replicas on one PostgreSQL) reach
this process's index before it answers. It works with any VectorIndex and any
:class:`ChangeSource`, as httpx's client works with any transport.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Protocol

from app.gallery.index import Partitions
from app.gallery.store import Change, EmbeddingRows


class ChangeSource(Protocol):
    """What a GallerySync reads: the store's version, change log and embeddings."""

    def version(self) -> int: ...

    def changes_since(self, *, version: int) -> list[Change] | None: ...

    def load_embeddings(
        self,
        *,
        dim: int,
        face_ids: list[str] | None = None,
        encoders: Collection[str] = (),
        collection: str | None = None,
    ) -> EmbeddingRows: ...


class GallerySync:
    """Replays ``source``'s change log into ``indexes`` (one VectorIndex a collection).

    Args:
        source: the store.
        indexes: the indexes to keep current; they hold only faces whose stored
            ``encoder`` is in ``encoders`` (embeddings of other models are never loaded,
            so never compared).
        encoders: the stored encoder names the indexes accept.
    """

    def __init__(self, source: ChangeSource, indexes: Partitions, encoders: Collection[str]):
        self.source = source
        self.indexes = indexes
        self.encoders = frozenset(encoders)
        self.version = -1
        self._lock = threading.Lock()

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
                self._reload()
                self.version = current
                return True
            self._replay(changes)
            self.version = max([current, *(c.version for c in changes)])
            return True

    def _reload(self) -> None:
        rows = self.source.load_embeddings(dim=self.indexes.dim, encoders=self.encoders)
        self.indexes.clear()
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
        """One collection afresh from the store (after an import). It reflects the store
        as it is now; later changes in the same replay are applied again, harmlessly."""
        rows = self.source.load_embeddings(
            dim=self.indexes.dim, encoders=self.encoders, collection=collection
        )
        self.indexes.drop(collection)
        if rows.face_ids:
            self.indexes.writable(collection).add(rows.face_ids, rows.subject_ids, rows.matrix)

    def _replay(self, changes: list[Change]) -> None:
        added = [c.face_id for c in changes if c.kind == "add_face" and c.face_id]
        fetched = (
            self.source.load_embeddings(
                dim=self.indexes.dim, face_ids=added, encoders=self.encoders
            )
            if added
            else None
        )
        row_of = {fid: i for i, fid in enumerate(fetched.face_ids)} if fetched else {}
        for change in changes:
            if change.kind == "add_face" and fetched and change.face_id in row_of:
                i = row_of[change.face_id]
                self.indexes.writable(change.collection).add(
                    [change.face_id], [change.subject_id], fetched.matrix[i : i + 1]
                )
            elif change.kind == "delete_face" and change.face_id:
                self.indexes.get(change.collection).remove_faces([change.face_id])
            elif change.kind == "delete_subject":
                self.indexes.get(change.collection).remove_subject(change.subject_id)
            elif change.kind == "delete_collection":
                self.indexes.drop(change.collection)
            elif change.kind == "reload_collection":
                self._reload_collection(change.collection)

    def advance(self, version: int) -> None:
        """Record that this process applied its own write of ``version`` to the index
        itself, when it was the next one; otherwise leave the gap for :meth:`sync`. Never
        waits: while a sync holds the lock (a full load can take seconds), the write is
        simply replayed by the next sync (replaying is harmless)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if version == self.version + 1:
                self.version = version
        finally:
            self._lock.release()
