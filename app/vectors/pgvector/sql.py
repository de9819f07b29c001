"""Search in PostgreSQL with pgvector: the database holds and searches the embeddings.

With the ``vector`` extension, every face's embedding is also kept in ``face_vectors``
(a ``vector(dim)`` column with an HNSW index), written in the same transaction as the
face and deleted with it (ON DELETE CASCADE). Identify is then one query: replicas hold
no copy of the gallery and replay no change log, and a write is visible to every replica
when it commits. Without the extension (or with FACEVERIFY_VECTOR_SEARCH=memory) every
process keeps its own index as before.

The table is made here, not by an Alembic migration: it exists only where the extension
does, and the extension needs a superuser to create (``CREATE EXTENSION vector``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from app.gallery.models import embedding_matrix
from app.vectors.index import Hits, SubjectHit

log = logging.getLogger("faceverify.gallery")

# The HNSW graph: pgvector's defaults (m 16, ef_construction 64) reach only 0.95
# recall@1 at 1M faces shaped like real embeddings, at any ef_search up to 400 (0.993 at
# 800, 57 ms). m 32, ef_construction 128: 0.9975 at ef_search 200 (35 ms p50), 1.0 at
# 300; the build takes about twice as long (1M faces: ~30 min on 2 cores). Measured on
# 400 stored faces as probes, their own face left out (docs/SCALING.md).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 128
# An HNSW build is fast while its graph fits in maintenance_work_mem and many times slower
# once it does not (pgvector then inserts on disk; it says so in a NOTICE). Measured
# here at m 32, 128-d: 16 MB held 9,308 faces, ~1,800 B a face; pgvector's overshoot
# and the building worker's own memory on top. Builds set maintenance_work_mem from the
# row count, up to the caller's ceiling (FACEVERIFY_PGVECTOR_BUILD_MEMORY_MB).
BUILD_BYTES_PER_FACE = 2_000
BUILD_MEMORY_MB = 2_048
# HNSW search breadth (pgvector's default is 40; iterative scans fetch more when the
# collection filter drops some). A graph keeps its recall only if the search widens as
# it grows: with m 32 / ef_construction 128, recall@1 at ef_search 200 is 0.9975 at 1M
# faces but 0.9875 at 3M, where 400 gives 0.995 (44 ms p50 with the index in
# shared_buffers; docs/SCALING.md). So ef_search is EF_SEARCH up to EF_SEARCH_ROWS faces
# in the graph and grows in proportion past it, to pgvector's limit of 1000 (10M+ faces:
# not measured, extrapolated). FACEVERIFY_PGVECTOR_EF_SEARCH fixes it instead.
EF_SEARCH = 200
EF_SEARCH_ROWS = 1_500_000
EF_SEARCH_MAX = 1000


def ef_search_for(rows: int) -> int:
    """The hnsw.ef_search a graph of ``rows`` faces is searched with."""
    return min(EF_SEARCH_MAX, max(EF_SEARCH, -(-EF_SEARCH * rows // EF_SEARCH_ROWS)))


def graph_size(engine: Engine) -> int:
    """Faces in the HNSW graph (all collections: the graph is one), from the planner's
    estimate (free; exact after a build or VACUUM, close enough between), or a count if
    the table has never been analysed."""
    with engine.connect() as conn:
        estimate = conn.execute(
            text("SELECT reltuples FROM pg_class WHERE relname = 'face_vectors'")
        ).scalar()
        if estimate is not None and estimate >= 0:
            return int(estimate)
        return int(conn.execute(text("SELECT count(*) FROM face_vectors")).scalar_one())


def table_exists(engine: Engine) -> bool:
    """Whether this database has a face_vectors table (plaintext embeddings)."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT to_regclass('face_vectors') IS NOT NULL")).scalar())


def enable(engine: Engine, *, dim: int, build_memory_mb: int = BUILD_MEMORY_MB) -> bool:
    """Make ``face_vectors`` (and fill it from ``faces``) if this is PostgreSQL with the
    vector extension installed or installable by this role. False: not available."""
    if engine.dialect.name != "postgresql":
        return False
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as exc:
        log.warning(
            "pgvector is not available (%s); searching in memory. Install it and run "
            "CREATE EXTENSION vector as a superuser to search in the database.",
            str(exc.orig).splitlines()[0],
        )
        return False
    with engine.begin() as conn:
        # Serialise concurrent start-ups (several workers on one database).
        conn.execute(text("SELECT pg_advisory_xact_lock(720412)"))
        _create_table(conn, dim)
        missing = _missing_vectors(conn)
        if missing >= BULK_REBUILD:  # a gallery meeting pgvector: load, then build once
            bulk_begin(conn)
            _backfill(conn, dim)
            bulk_end(conn, build_memory_mb)
        else:
            conn.execute(text(HNSW_INDEX))
            if missing and _backfill(conn, dim):
                conn.execute(text("ANALYZE face_vectors"))
    if not index_is_current(engine):
        log.warning(
            "the pgvector HNSW index was built with older parameters; recall past ~1M "
            "faces is lower than it can be. Rebuild it (searches go on meanwhile): "
            "faceverify db rebuild-vector-index"
        )
    return True


def _create_table(conn: Connection, dim: int) -> None:
    conn.execute(
        text(
            f"""
            CREATE TABLE IF NOT EXISTS face_vectors (
                face_id varchar(36) PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
                collection_id varchar(64) NOT NULL,
                subject_id varchar(128) NOT NULL,
                encoder varchar(64) NOT NULL,
                embedding vector({dim}) NOT NULL
            )"""
        )
    )
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS ix_face_vectors_collection ON face_vectors (collection_id)"
        )
    )


def _missing_vectors(conn: Connection) -> int:
    """Faces without their face_vectors row. face_vectors holds a subset of faces (a
    foreign key): equal counts mean none is missing, which two counts tell in ~0.5 s at
    3M faces where the anti-join took ~3 s warm, at every start of every replica."""
    faces, vectors = conn.execute(
        text("SELECT (SELECT count(*) FROM faces), (SELECT count(*) FROM face_vectors)")
    ).one()
    if faces == vectors:
        return 0
    missing: int = conn.execute(
        text(
            "SELECT count(*) FROM faces f LEFT JOIN face_vectors v "
            "ON v.face_id = f.id WHERE v.face_id IS NULL"
        )
    ).scalar_one()
    return missing


def _backfill(conn: Connection, dim: int) -> int:
    """Faces stored while the table did not exist (or before pgvector was installed)."""
    missing = conn.execute(
        text(
            "SELECT f.id, f.collection_id, f.subject_id, f.encoder, f.embedding FROM faces f "
            "LEFT JOIN face_vectors v ON v.face_id = f.id WHERE v.face_id IS NULL"
        )
    ).all()
    rows = [r for r in missing if len(r[4]) == dim * 4]
    if rows:
        log.info("copying %d embeddings into face_vectors", len(rows))
        insert_vectors(
            conn,
            [(r[0], r[1], r[2], r[3]) for r in rows],
            embedding_matrix([r[4] for r in rows], dim),
        )
    return len(rows)


# Imports at least this large rebuild the HNSW index after loading instead of updating
# it row by row: ~680 faces/s with the index kept up (measured here), versus loading at
# full speed and one build (pgvector's advice for initial loads).
BULK_REBUILD = 10_000
HNSW_OPTIONS = f"m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}"
HNSW_INDEX = (
    "CREATE INDEX IF NOT EXISTS ix_face_vectors_hnsw ON face_vectors "
    f"USING hnsw (embedding vector_l2_ops) WITH ({HNSW_OPTIONS})"
)


def index_is_current(engine: Engine) -> bool:
    """Whether the HNSW index was built with this version's graph parameters (one made
    by an earlier version keeps working, with lower recall past ~1M faces)."""
    with engine.connect() as conn:
        options = conn.execute(
            text("SELECT reloptions FROM pg_class WHERE relname = 'ix_face_vectors_hnsw'")
        ).scalar_one_or_none()
    return options is not None and sorted(options) == sorted(HNSW_OPTIONS.split(", "))


def rebuild_index(engine: Engine, build_memory_mb: int = BUILD_MEMORY_MB) -> None:
    """Build the HNSW index afresh with this version's parameters, without blocking
    searches or writes meanwhile: CREATE INDEX CONCURRENTLY under a new name, then swap
    names (the old index answers until the swap)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("DROP INDEX IF EXISTS ix_face_vectors_hnsw_new"))
        _build_settings(conn, build_memory_mb, local=False)
        conn.execute(
            text(
                "CREATE INDEX CONCURRENTLY ix_face_vectors_hnsw_new ON face_vectors "
                f"USING hnsw (embedding vector_l2_ops) WITH ({HNSW_OPTIONS})"
            )
        )
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX IF EXISTS ix_face_vectors_hnsw"))
        conn.execute(text("ALTER INDEX ix_face_vectors_hnsw_new RENAME TO ix_face_vectors_hnsw"))
        conn.execute(text("ANALYZE face_vectors"))


def bulk_begin(conn: Connection) -> None:
    """Before a large import in this transaction: drop the HNSW index (searches of the
    table wait for the transaction; they are never answered from half an import)."""
    conn.execute(text("DROP INDEX IF EXISTS ix_face_vectors_hnsw"))


def bulk_end(conn: Connection, build_memory_mb: int = BUILD_MEMORY_MB) -> None:
    """After it: build the index once, with the memory its graph needs and both cores."""
    _build_settings(conn, build_memory_mb, local=True)
    conn.execute(text(HNSW_INDEX))
    # Fresh statistics, or the planner keeps estimating the table small and sorts every
    # row of a collection instead of walking the HNSW index (measured: 141 ms against
    # 13 ms at 200k faces).
    conn.execute(text("ANALYZE face_vectors"))


def build_memory_mb(faces: int, ceiling_mb: int) -> int:
    """maintenance_work_mem for an HNSW build over ``faces`` rows: enough for the graph
    to stay in memory, at most ``ceiling_mb``."""
    return max(64, min(ceiling_mb, _needed_mb(faces)))


def _needed_mb(faces: int) -> int:
    return math.ceil(faces * BUILD_BYTES_PER_FACE / 2**20) + 64


def _build_settings(conn: Connection, ceiling_mb: int, *, local: bool) -> None:
    faces = int(conn.execute(text("SELECT count(*) FROM face_vectors")).scalar_one())
    memory = build_memory_mb(faces, ceiling_mb)
    if _needed_mb(faces) > ceiling_mb:
        log.warning(
            "the HNSW graph of %d faces needs ~%d MB to build in memory; "
            "FACEVERIFY_PGVECTOR_BUILD_MEMORY_MB allows %d, so the build goes on disk and "
            "takes several times longer",
            faces,
            _needed_mb(faces),
            ceiling_mb,
        )
    scope = "LOCAL " if local else ""
    conn.execute(text(f"SET {scope}maintenance_work_mem = '{memory}MB'"))
    conn.execute(text(f"SET {scope}max_parallel_maintenance_workers = 2"))


def vector_fields(vectors: np.ndarray) -> list[str]:
    """pgvector's text form of each row; 9 significant digits give every float32 back
    exactly."""
    fmt = "[" + ",".join(["%.9g"] * vectors.shape[1]) + "]"
    return [fmt % tuple(row) for row in vectors.tolist()]


def literal(vector: np.ndarray) -> str:
    """pgvector's text form; float32 values written exactly (repr round-trips)."""
    return "[" + ",".join(repr(float(v)) for v in vector) + "]"


def insert_vectors(
    conn: Connection, keys: list[tuple[str, str, str, str]], vectors: np.ndarray
) -> None:
    """Add (face id, collection, subject, encoder) rows with their embeddings."""
    conn.execute(
        text(
            "INSERT INTO face_vectors (face_id, collection_id, subject_id, encoder, embedding) "
            "VALUES (:f, :c, :s, :e, CAST(:v AS vector))"
        ),
        [
            {"f": f, "c": c, "s": s, "e": e, "v": literal(v)}
            for (f, c, s, e), v in zip(keys, vectors, strict=True)
        ],
    )


def search(
    engine: Engine,
    *,
    collection: str,
    query: np.ndarray,
    k: int,
    encoders: Collection[str],
    exclude: str | None = None,
    ef_search: int = EF_SEARCH,
) -> Hits:
    """The ``k`` subjects of the collection with the closest faces (each subject's best
    face), nearest first, from the HNSW index searched ``ef_search`` wide (see
    :func:`ef_search_for`); the shortlist is the face ids it read."""
    if k <= 0:
        return Hits()
    limit = max(8 * k, 64)
    with engine.begin() as conn:
        # pgvector accepts 1..1000; iterative scans go on past it when rows are filtered.
        ef = min(EF_SEARCH_MAX, max(ef_search, limit))
        conn.execute(text(f"SET LOCAL hnsw.ef_search = {ef}"))
        conn.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        while True:
            rows = conn.execute(
                text(
                    "SELECT face_id, subject_id, embedding <-> CAST(:q AS vector) AS d "
                    "FROM face_vectors WHERE collection_id = :c AND encoder = ANY(:e) "
                    "AND face_id <> :x ORDER BY embedding <-> CAST(:q AS vector) LIMIT :n"
                ),
                {
                    "q": literal(query),
                    "c": collection,
                    "e": sorted(encoders),
                    "n": limit,
                    "x": exclude or "",
                },
            ).all()
            hits = _subject_hits(rows, k)
            if len(hits) >= k or len(rows) < limit or limit >= 4096:
                return Hits(hits, [str(r[0]) for r in rows])
            limit *= 4


def rescore(
    engine: Engine,
    *,
    collection: str,
    query: np.ndarray,
    previous: Hits,
    k: int,
    encoders: Collection[str],
    exclude: str | None = None,
) -> list[SubjectHit]:
    """:meth:`app.vectors.index.VectorIndex.rescore` here: exact distances from ``query``
    to the faces ``previous`` read, by key (faces deleted since drop out)."""
    if previous.shortlist is None:
        return search(
            engine, collection=collection, query=query, k=k, encoders=encoders, exclude=exclude
        )
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT face_id, subject_id, embedding <-> CAST(:q AS vector) AS d "
                "FROM face_vectors WHERE face_id = ANY(:f) AND collection_id = :c "
                "AND encoder = ANY(:e) AND face_id <> :x"
            ),
            {
                "q": literal(query),
                "f": previous.shortlist,
                "c": collection,
                "e": sorted(encoders),
                "x": exclude or "",
            },
        ).all()
    return _subject_hits(rows, k)


def _subject_hits(rows: Sequence[Any], k: int) -> list[SubjectHit]:
    """Each subject's nearest face among (face id, subject id, distance) rows, nearest
    first, at most ``k``."""
    found = sorted(((str(r[0]), str(r[1]), float(r[2])) for r in rows), key=lambda r: r[2])
    hits: dict[str, SubjectHit] = {}
    for face_id, subject_id, d in found:  # relaxed order: sort again here
        if subject_id not in hits:
            hits[subject_id] = SubjectHit(subject_id, face_id, d)
    return list(hits.values())[:k]


def counts(engine: Engine, *, encoders: Collection[str]) -> dict[str, tuple[int, int]]:
    """(faces, subjects) per collection of the given encoders."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT collection_id, count(*), count(DISTINCT subject_id) FROM face_vectors "
                "WHERE encoder = ANY(:e) GROUP BY collection_id"
            ),
            {"e": sorted(encoders)},
        ).all()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def subject_count(engine: Engine, *, collection: str, encoders: Collection[str]) -> int:
    """Subjects of one collection with a face of the given encoders."""
    return _count(engine, "count(DISTINCT subject_id)", collection, encoders)


def collection_size(engine: Engine, *, collection: str, encoders: Collection[str]) -> int:
    """Faces of one collection of the given encoders."""
    return _count(engine, "count(*)", collection, encoders)


def _count(engine: Engine, what: str, collection: str, encoders: Collection[str]) -> int:
    # ``what`` is one of the two constants above, never a caller's text.
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    f"SELECT {what} FROM face_vectors "
                    "WHERE collection_id = :c AND encoder = ANY(:e)"
                ),
                {"c": collection, "e": sorted(encoders)},
            ).scalar_one()
        )
