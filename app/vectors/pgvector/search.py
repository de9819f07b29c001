"""The pgvector backend: PostgreSQL searches itself (sql.py), and its write side joins
the gallery's transaction, so a face's vector row commits with the face (and an import's
rows are copied, with the HNSW index built once after them)."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Collection

import numpy as np

from app.gallery import Added, Database, Gallery, Transaction, pgcopy
from app.vectors.index import Hits, SubjectHit
from app.vectors.pgvector import sql

# A count read from PostgreSQL is reused for this long (a count over millions of rows
# costs more than the search).
COUNT_TTL_SECONDS = 5.0


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
        self,
        gallery: Gallery,
        *,
        dim: int,
        encoders: Collection[str],
        ef_search: int = 0,
        build_memory_mb: int = sql.BUILD_MEMORY_MB,
    ) -> None:
        """A search of the vector rows kept in ``gallery``'s database (see
        :meth:`enable`, which makes them)."""
        self.engine = gallery.database.engine
        self.mirror = PgvectorMirror(dim, build_memory_mb)
        self.build_memory_mb = build_memory_mb
        self.encoders = encoders
        # 0: by the HNSW graph's size (sql.ef_search_for)
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
        graph = self._memo.get(("graph",), lambda: sql.graph_size(self.engine))
        return sql.ef_search_for(graph)

    def collection_size(self, collection: str) -> int:
        """How many faces a search of ``collection`` looked at (a count, memoised)."""
        return self._memo.get(
            ("size", collection),
            lambda: sql.collection_size(self.engine, collection=collection, encoders=self.encoders),
        )

    def subject_count(self, collection: str) -> int:
        """How many subjects a search of ``collection`` looked at (memoised)."""
        return self._memo.get(
            ("subjects", collection),
            lambda: sql.subject_count(self.engine, collection=collection, encoders=self.encoders),
        )

    def search(
        self, collection: str, embedding: np.ndarray, k: int, exclude: str | None = None
    ) -> tuple[Hits, int]:
        hits = sql.search(
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
        return sql.rescore(
            self.engine,
            collection=collection,
            query=embedding,
            previous=previous,
            k=k,
            encoders=self.encoders,
        )

    def counts(self, collection: str | None = None) -> dict[str, int]:
        per = sql.counts(self.engine, encoders=self.encoders)
        picked = [per.get(collection, (0, 0))] if collection is not None else per.values()
        return {"faces": sum(f for f, _ in picked), "subjects": sum(n for _, n in picked)}

    def face_counts(self) -> dict[str, int]:
        per = sql.counts(self.engine, encoders=self.encoders)
        return {name: faces for name, (faces, _) in per.items() if faces}

    # ---- lifecycle -------------------------------------------------------------------
    tables = ("face_vectors",)

    @classmethod
    def enable(
        cls,
        gallery: Gallery,
        *,
        dim: int,
        encoders: Collection[str],
        ef_search: int = 0,
        build_memory_mb: int = sql.BUILD_MEMORY_MB,
    ) -> PgvectorSearch | None:
        """Keep and search embeddings in PostgreSQL with pgvector, if it is available
        (the table made and filled from the gallery); None: it is not."""
        if not sql.enable(gallery.database.engine, dim=dim, build_memory_mb=build_memory_mb):
            return None
        return cls(
            gallery,
            dim=dim,
            encoders=encoders,
            ef_search=ef_search,
            build_memory_mb=build_memory_mb,
        )

    def rebuild(self) -> None:
        """The HNSW index built afresh (searches go on meanwhile)."""
        sql.rebuild_index(self.engine, self.build_memory_mb)

    def erase(self, face_ids: list[str], collection: str | None = None) -> None:
        pass  # PostgreSQL holds the vectors: the vacuum of ``tables`` erases them


def table_exists(database: Database) -> bool:
    """Whether this database keeps vectors in plaintext beside the faces."""
    return sql.table_exists(database.engine)


class PgvectorMirror:
    """The write side: each stored face's vector row, in the same transaction. An
    import of at least BULK_REBUILD faces drops the HNSW index first, copies its rows,
    and builds the index once before it commits."""

    def __init__(self, dim: int, build_memory_mb: int) -> None:
        self.dim = dim
        self.build_memory_mb = build_memory_mb
        self._bulk: weakref.WeakSet[Transaction] = weakref.WeakSet()

    def stored(self, tx: Transaction, added: Added) -> None:
        if added.vectors.shape[1] != self.dim:
            return
        keys = [
            (f, added.collection, s, added.encoder)
            for f, s in zip(added.face_ids, added.subject_ids, strict=True)
        ]
        if not added.bulk:
            sql.insert_vectors(tx.connection, keys, added.vectors)
            return
        if added.total >= sql.BULK_REBUILD and tx not in self._bulk:
            sql.bulk_begin(tx.connection)
            self._bulk.add(tx)
        _copy_vectors(tx, keys, added.vectors)

    def before_commit(self, tx: Transaction) -> None:
        if tx in self._bulk:
            sql.bulk_end(tx.connection, self.build_memory_mb)

    def after_commit(self, tx: Transaction) -> None:
        self._bulk.discard(tx)


def _copy_vectors(
    tx: Transaction, keys: list[tuple[str, str, str, str]], vectors: np.ndarray
) -> None:
    """An import's vector rows by COPY (app/gallery/pgcopy.py)."""
    pgcopy.copy_lines(
        tx.connection,
        "face_vectors",
        ("face_id", "collection_id", "subject_id", "encoder", "embedding"),
        (
            "\t".join(pgcopy.text_field(v) for v in key) + f"\t{v}\n"
            for key, v in zip(keys, sql.vector_fields(vectors), strict=True)
        ),
    )
