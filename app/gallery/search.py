"""Where identify searches and how the gallery is counted: one protocol, two places.

- :class:`MemorySearch`: this process's own index of each collection (exact or ANN),
  filled from the store on start-up (in the background if asked) and kept current by
  replaying the store's change log (:class:`~app.gallery.sync.GallerySync`).
- :class:`PgvectorSearch`: PostgreSQL searches itself with pgvector; this process holds
  no index and replays nothing.

``app.service.build_service`` picks one; nothing else asks which it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Protocol

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.errors import IndexLoading
from app.gallery import pgvector
from app.gallery.index import ExactIndex, Hits, Partitions, SubjectHit, VectorIndex
from app.gallery.snapshot import SnapshotDir, erase_rows
from app.gallery.store import GalleryStore
from app.gallery.sync import GallerySync

log = logging.getLogger("faceverify.search")

# A count read from PostgreSQL is reused for this long (a count over millions of rows
# costs more than the search).
COUNT_TTL_SECONDS = 5.0


class GallerySearch(Protocol):
    """Where identify searches, and the gallery's counts for /info and /collections."""

    # "memory" or "pgvector" (shown in /info).
    name: str

    @property
    def ready(self) -> threading.Event:
        """Set once searches can be answered (the start-up load is done)."""
        ...

    def search(
        self, collection: str, embedding: np.ndarray, k: int, exclude: str | None = None
    ) -> tuple[Hits, int]:
        """The nearest subjects (each by its nearest face, ``exclude`` left out) and how
        many faces were searched. IndexLoading while the collection cannot be searched
        yet."""
        ...

    def rescore(
        self, collection: str, embedding: np.ndarray, previous: Hits, k: int
    ) -> list[SubjectHit]:
        """:meth:`search` for an embedding near the one that gave ``previous``: its
        shortlist re-scored exactly."""
        ...

    def counts(self, collection: str | None = None) -> dict[str, int]:
        """Faces and subjects of the running model: of one collection, or of all."""
        ...

    def subject_count(self, collection: str) -> int:
        """The subjects a search of ``collection`` just looked at (N of the open-set
        rule); cheap enough for every identify."""
        ...

    def face_counts(self) -> dict[str, int]:
        """Faces of the running model per collection (those with any)."""
        ...

    def faces_added(
        self, collection: str, face_ids: list[str], subject_id: str, embeddings: np.ndarray
    ) -> None:
        """This process stored these faces (at a version :meth:`advanced` will name)."""
        ...

    def subject_removed(self, collection: str, subject_id: str) -> None: ...

    def faces_removed(self, collection: str, face_ids: list[str]) -> None: ...

    def collection_dropped(self, collection: str) -> None: ...

    def erase(self, face_ids: list[str], collection: str | None = None) -> None:
        """Deleted faces (or a deleted collection's) out of any file this search keeps
        (index snapshots)."""
        ...

    def advanced(self, version: int) -> None:
        """This process's own write made the store's version ``version``."""
        ...


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

    def __init__(
        self,
        store: GalleryStore,
        *,
        dim: int,
        encoders: frozenset[str],
        wait_seconds: float,
        factory: Callable[[int], VectorIndex] = ExactIndex,
        snapshots: SnapshotDir | None = None,
        background: bool = False,
    ) -> None:
        self.indexes = Partitions(dim, factory)
        self.gallery = GallerySync(store, self.indexes, encoders, snapshots)
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

    def faces_added(
        self, collection: str, face_ids: list[str], subject_id: str, embeddings: np.ndarray
    ) -> None:
        self.indexes.writable(collection).add(face_ids, [subject_id] * len(face_ids), embeddings)

    def subject_removed(self, collection: str, subject_id: str) -> None:
        self.indexes.get(collection).remove_subject(subject_id)

    def faces_removed(self, collection: str, face_ids: list[str]) -> None:
        self.indexes.get(collection).remove_faces(face_ids)

    def collection_dropped(self, collection: str) -> None:
        self.indexes.drop(collection)

    def erase(self, face_ids: list[str], collection: str | None = None) -> None:
        if self.gallery.snapshots is not None:
            erase_rows(self.gallery.snapshots.root, face_ids, collection=collection)

    def advanced(self, version: int) -> None:
        self.gallery.advance(version)


class TtlMemo:
    """Values read at most every ``ttl`` seconds: key -> (when read, value)."""

    def __init__(self, ttl: float = COUNT_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._values: dict[tuple[str, ...], tuple[float, int]] = {}

    def get(self, key: tuple[str, ...], read: Callable[[], int]) -> int:
        """``read()``, or its value from under ``ttl`` seconds ago."""
        now = time.monotonic()
        cached = self._values.get(key)
        if cached is None or now - cached[0] > self.ttl:
            cached = self._values[key] = (now, read())
        return cached[1]


class PgvectorSearch:
    """PostgreSQL with pgvector searches itself: no index in this process, no replay,
    so a write on one replica is in the next search on every other."""

    name = "pgvector"

    def __init__(
        self, store: GalleryStore, *, encoders: Collection[str], ef_search: int = 0
    ) -> None:
        self.engine = store.engine
        self.encoders = encoders
        # 0: by the HNSW graph's size (pgvector.ef_search_for)
        self.ef_search_setting = ef_search
        self._memo = TtlMemo()
        self._ready = threading.Event()
        self._ready.set()

    @property
    def ready(self) -> threading.Event:
        return self._ready

    def ef_search(self) -> int:
        """hnsw.ef_search for the next search: the setting, or by the graph's size."""
        if self.ef_search_setting:
            return self.ef_search_setting
        graph = self._memo.get(("graph",), lambda: pgvector.graph_size(self.engine))
        return pgvector.ef_search_for(graph)

    def collection_size(self, collection: str) -> int:
        """How many faces a search of ``collection`` looked at (a count, memoised)."""
        return self._memo.get(
            ("size", collection),
            lambda: pgvector.collection_size(
                self.engine, collection=collection, encoders=self.encoders
            ),
        )

    def subject_count(self, collection: str) -> int:
        """How many subjects a search of ``collection`` looked at (memoised)."""
        return self._memo.get(
            ("subjects", collection),
            lambda: pgvector.subject_count(
                self.engine, collection=collection, encoders=self.encoders
            ),
        )

    def search(
        self, collection: str, embedding: np.ndarray, k: int, exclude: str | None = None
    ) -> tuple[Hits, int]:
        hits = pgvector.search(
            self.engine,
            collection=collection,
            query=embedding,
            k=k,
            encoders=self.encoders,
            exclude=exclude,
            ef_search=self.ef_search(),
        )
        return hits, self.collection_size(collection)

    def rescore(
        self, collection: str, embedding: np.ndarray, previous: Hits, k: int
    ) -> list[SubjectHit]:
        return pgvector.rescore(
            self.engine,
            collection=collection,
            query=embedding,
            previous=previous,
            k=k,
            encoders=self.encoders,
        )

    def counts(self, collection: str | None = None) -> dict[str, int]:
        per = pgvector.counts(self.engine, encoders=self.encoders)
        picked = [per.get(collection, (0, 0))] if collection is not None else per.values()
        return {"faces": sum(f for f, _ in picked), "subjects": sum(n for _, n in picked)}

    def face_counts(self) -> dict[str, int]:
        per = pgvector.counts(self.engine, encoders=self.encoders)
        return {name: faces for name, (faces, _) in per.items() if faces}

    # The database is the index: a write is searchable when it commits.
    def faces_added(
        self, collection: str, face_ids: list[str], subject_id: str, embeddings: np.ndarray
    ) -> None:
        pass

    def subject_removed(self, collection: str, subject_id: str) -> None:
        pass

    def faces_removed(self, collection: str, face_ids: list[str]) -> None:
        pass

    def collection_dropped(self, collection: str) -> None:
        pass

    def erase(self, face_ids: list[str], collection: str | None = None) -> None:
        pass  # PostgreSQL holds the vectors: the store's vacuum erases them

    def advanced(self, version: int) -> None:
        pass
