"""The memory backend: each collection's index in this process (exact or ANN), filled
from the gallery on start-up (in the background if asked), kept current by replaying
the gallery's change log (app/vectors/sync.py), and told of this process's own writes
once they commit (:class:`MemoryMirror`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.errors import IndexLoading
from app.gallery import Change, Gallery, Transaction
from app.vectors.index import ExactIndex, Hits, Partitions, SubjectHit, VectorIndex
from app.vectors.snapshot import SnapshotDir, erase_rows
from app.vectors.sync import GalleryChanges, GallerySync

log = logging.getLogger("faceverify.search")


class MemorySearch:
    """Each collection's index in this process, kept in step with the store.

    Each collection gets its own index from ``factory``, filled from ``store`` (faces of
    ``encoders`` only) and kept current by replaying the change log. With ``background``
    the start-up load runs on a thread, so a server answers at once at any gallery size
    (verify, enroll and the subject routes never use the index; identify waits for it).
    With ``snapshots``, a large index is saved there and shared, memory-mapped, by the
    processes of the machine.
    """

    name = "memory"

    tables: tuple[str, ...] = ()

    def __init__(
        self,
        gallery: Gallery,
        *,
        dim: int,
        encoders: frozenset[str],
        wait_seconds: float,
        factory: Callable[[int], VectorIndex] = ExactIndex,
        snapshots: SnapshotDir | None = None,
        background: bool = False,
    ) -> None:
        self.indexes = Partitions(dim, factory)
        self.gallery = GallerySync(
            GalleryChanges(gallery),
            self.indexes,
            encoders,
            snapshots,
            save_in_background=background,
        )
        self.mirror = MemoryMirror(self, frozenset(encoders))
        self.wait_seconds = wait_seconds
        self._ready = threading.Event()
        if background:
            threading.Thread(target=self._load, name="index-load", daemon=True).start()
        else:
            self._load()

    @property
    def ready(self) -> threading.Event:
        return self._ready

    def _load(self) -> None:
        started = time.perf_counter()
        while True:
            try:
                self.gallery.sync()
                break
            except SQLAlchemyError as exc:  # the database is down: try again, say so
                log.warning("loading the index failed (%s); retrying in 1 s", exc)
                time.sleep(1.0)
        self._ready.set()
        log.info(
            "index loaded: %d faces in %d collections in %.1f s",
            len(self.indexes),
            len(self.indexes.face_counts()),
            time.perf_counter() - started,
        )

    def search(
        self, collection: str, embedding: np.ndarray, k: int, exclude: str | None = None
    ) -> tuple[Hits, int]:
        self._current(collection)
        index = self.indexes.get(collection)
        return index.search(embedding, k, exclude=exclude), len(index)

    def rescore(
        self, collection: str, embedding: np.ndarray, previous: Hits, k: int
    ) -> list[SubjectHit]:
        self._current(collection)
        return self.indexes.get(collection).rescore(embedding, previous, k)

    def subject_count(self, collection: str) -> int:
        return self.indexes.get(collection).subject_count

    def _current(self, collection: str) -> None:
        """Wait for the start-up load, bring the index up to the store's version, and
        wait while ``collection`` itself is reloaded after an import (another
        collection's reload is not waited for)."""
        if not self._ready.wait(self.wait_seconds):
            raise IndexLoading(
                "The 1:N index is still loading after start-up; retry shortly "
                "(verify works meanwhile).",
                retry_after=2,
            )
        self.gallery.sync()
        if not self.gallery.wait_for(collection, self.wait_seconds):
            raise IndexLoading(
                f"Collection {collection!r} is being reloaded after an import; retry "
                "shortly (verify works meanwhile).",
                retry_after=2,
            )

    def counts(self, collection: str | None = None) -> dict[str, int]:
        """While the index loads: what is loaded so far."""
        if self._ready.is_set():
            self.gallery.sync()
        if collection is not None:
            self.gallery.wait_for(collection, self.wait_seconds)
            index = self.indexes.get(collection)
            return {"faces": len(index), "subjects": index.subject_count}
        return {
            "faces": len(self.indexes),
            "subjects": sum(self.indexes.subject_counts().values()),
        }

    def face_counts(self) -> dict[str, int]:
        if self._ready.is_set():
            self.gallery.sync()
        return self.indexes.face_counts()

    def erase(self, face_ids: list[str], collection: str | None = None) -> None:
        if self.gallery.snapshots is not None:
            erase_rows(self.gallery.snapshots.root, face_ids, collection=collection)

    def rebuild(self) -> None:
        """Every index afresh from the gallery (and a new snapshot)."""
        self.gallery.version = -1
        self.gallery.sync()


class MemoryMirror:
    """The memory backend's write side: once a write of this process commits, its
    changes are applied to the index, and the index is at the write's version when it
    was the next one (GallerySync.advance); a change it cannot apply (an import's) is
    left to the replay."""

    def __init__(self, search: MemorySearch, encoders: frozenset[str]) -> None:
        self.search = search
        self.encoders = encoders

    def stored(self, tx: Transaction, added: object) -> None:
        pass  # applied after the commit, from tx.added

    def before_commit(self, tx: Transaction) -> None:
        pass

    def after_commit(self, tx: Transaction) -> None:
        vectors = {
            face_id: added.vectors[i : i + 1]
            for added in tx.added
            if not added.bulk and added.encoder in self.encoders
            for i, face_id in enumerate(added.face_ids)
        }
        epoch = self.search.indexes.epoch
        applied = [self._apply(change, vectors) for change in tx.log.entries]
        if tx.log.entries and all(applied):
            self.search.gallery.advance(tx.version, epoch)

    def _apply(self, change: Change, vectors: dict[str, np.ndarray]) -> bool:
        indexes = self.search.indexes
        if change.kind == "add_face" and change.face_id in vectors:
            embedding = vectors[change.face_id]
            indexes.writable(change.collection).add(
                [change.face_id], [change.subject_id], embedding
            )
        elif change.kind == "delete_face" and change.face_id:
            indexes.get(change.collection).remove_faces([change.face_id])
        elif change.kind == "delete_subject":
            indexes.get(change.collection).remove_subject(change.subject_id)
        elif change.kind == "delete_collection":
            indexes.drop(change.collection)
        elif change.kind != "create_collection":
            return False  # an import's reload, another model's face: the replay's
        return True
