"""Everything a running service needs, from settings alone: the models, the gallery, the
calibration, and the vector backend (the one place that picks it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import NotReady
from app.face import quality
from app.face.registry import build_pipeline, encoder_model, load_checked_weights
from app.face.weights import WeightFile
from app.gallery import EncryptionKeyError, Gallery, cipher_from
from app.gallery.sealing import check_keys
from app.privacy.erasure import Erasure
from app.privacy.retention import Retention
from app.scoring.calibration import Calibration
from app.service.collections import Collections
from app.service.core import FaceService
from app.service.records import SubjectRecords
from app.settings import Settings
from app.vectors import ExactIndex, MemorySearch, Partitions, VectorBackend, VectorIndex
from app.vectors.pgvector import PgvectorSearch, table_exists
from app.vectors.snapshot import Snapshot, SnapshotDir, erase_all
from app.vectors.sync import GalleryChanges, GallerySync

log = logging.getLogger("faceverify.gallery")


def vector_backend(
    settings: Settings,
    gallery: Gallery,
    *,
    dim: int,
    encoders: frozenset[str],
    background: bool = True,
) -> VectorBackend:
    """PostgreSQL with pgvector when the settings allow it (FACEVERIFY_VECTOR_SEARCH
    auto or pgvector) and the database can; else an index of each collection in this
    process, loaded in the background (``background``). Its write side joins every
    write of ``gallery``."""
    backend: VectorBackend | None = pgvector_backend(settings, gallery, dim=dim, encoders=encoders)
    if backend is None:
        backend = memory_backend(
            settings, gallery, dim=dim, encoders=encoders, background=background
        )
    gallery.mirror = backend.mirror
    return backend


def pgvector_backend(
    settings: Settings, gallery: Gallery, *, dim: int, encoders: frozenset[str]
) -> PgvectorSearch | None:
    """The pgvector backend, if the settings ask for it and the database has it (None:
    search in memory; NotReady when FACEVERIFY_VECTOR_SEARCH=pgvector and it cannot).
    With encryption at rest there is none: open_gallery refuses the two together."""
    if settings.vector_search == "memory" or gallery.sealing.cipher is not None:
        return None
    backend = PgvectorSearch.enable(
        gallery,
        dim=dim,
        encoders=encoders,
        ef_search=settings.pgvector_ef_search,
        build_memory_mb=settings.pgvector_build_memory_mb,
    )
    if backend is None and settings.vector_search == "pgvector":
        raise NotReady(
            "FACEVERIFY_VECTOR_SEARCH=pgvector, but the database is not PostgreSQL "
            "with the vector extension (see docs/SCALING.md)."
        )
    return backend


def memory_backend(
    settings: Settings,
    gallery: Gallery,
    *,
    dim: int,
    encoders: frozenset[str],
    background: bool = True,
) -> MemorySearch:
    if gallery.sealing.cipher is not None:
        # A snapshot's vec.npy holds every embedding in plaintext (issue 37): with
        # encryption at rest none is written (each process builds its own index), and
        # one left from before the key was set is overwritten and removed.
        removed = erase_all(settings.resolved_index_dir())
        if removed:
            log.warning(
                "%d index snapshots under %s held embeddings in plaintext beside an "
                "encrypted gallery: overwritten and removed",
                removed,
                settings.resolved_index_dir(),
            )
    return MemorySearch(
        gallery,
        dim=dim,
        encoders=encoders,
        wait_seconds=settings.inference_wait_seconds,
        factory=_index_factory(settings),
        snapshots=_snapshots(settings) if gallery.sealing.cipher is None else None,
        background=background,
    )


def save_index_snapshot(
    settings: Settings, gallery: Gallery, *, dim: int, encoders: frozenset[str]
) -> Snapshot | str:
    """The snapshot a server of these settings opens at start (app/vectors/snapshot.py),
    built now from the store: what `gallery import` leaves behind. Where none is saved,
    why: pgvector searches in the database, encryption at rest keeps no plaintext
    snapshot, the exact index has none, too few faces for one, or a face deleted while
    it was written (it is erased then)."""
    snapshots = _snapshots(settings)
    if snapshots is None:
        return "FACEVERIFY_MEMORY_INDEX=exact keeps no snapshot"
    if gallery.sealing.cipher is not None:
        return "encryption at rest keeps no plaintext snapshot"
    if pgvector_backend(settings, gallery, dim=dim, encoders=encoders) is not None:
        return "the server searches in PostgreSQL (pgvector)"
    indexes = Partitions(dim, _index_factory(settings))
    saved = GallerySync(GalleryChanges(gallery), indexes, encoders, snapshots).save_snapshot()
    if saved is not None:
        return saved
    faces = len(indexes)
    if faces < snapshots.min_faces:
        return (
            f"{faces:,} faces, under FACEVERIFY_INDEX_SNAPSHOT_MIN_FACES "
            f"({snapshots.min_faces:,}): a start reads them in under a second"
        )
    return (
        "it could not be kept (a face deleted while it was written, and it was erased; or "
        "the folder not writable: see the log above); the next start saves one"
    )


def _index_factory(settings: Settings) -> Callable[[int], VectorIndex]:
    if settings.memory_index == "exact":
        return ExactIndex
    from app.vectors.ann import AnnIndex

    return lambda dim: AnnIndex(dim, exact_below=settings.ann_exact_below)


def _snapshots(settings: Settings) -> SnapshotDir | None:
    if settings.memory_index != "ann":
        return None
    return SnapshotDir(
        settings.resolved_index_dir(),
        min_faces=settings.index_snapshot_min_faces,
        exact_below=settings.ann_exact_below,
    )


def build_service(settings: Settings) -> tuple[FaceService, dict[str, WeightFile]]:
    """Load and check the models, open (and migrate) the gallery and the calibration."""
    weights = load_checked_weights(settings)
    calibration = Calibration.load(settings.resolved_calibration_file())
    model = encoder_model(settings)
    gallery = open_gallery(settings)
    # The 1:N index starts loading (on a thread of its own) before the models do: a
    # restart's wait for identify overlaps theirs (issue 41).
    vectors = vector_backend(settings, gallery, dim=model.dim, encoders=model.compatible)
    try:
        pipeline = build_pipeline(settings, weights)
        if (pipeline.dim, pipeline.compatible) != (model.dim, model.compatible):
            raise NotReady(f"the {model.name} model's encoder is not the one it declares")
        # First use at start-up, not in the first request (first /compare 1.9x the
        # steady one before; docs/PERFORMANCE.md).
        quality.measure(pipeline.warm())
    except BaseException:
        gallery.close()
        raise
    service = FaceService(
        settings=settings,
        pipeline=pipeline,
        gallery=gallery,
        calibration=calibration,
        vectors=vectors,
    )
    return service, weights


def open_gallery(settings: Settings, *, rotating: bool = False) -> Gallery:
    """The gallery the settings name, migrated, with its encryption key (refused with
    pgvector: PostgreSQL searches plaintext vectors; docs/PRIVACY.md). A wrong key is
    refused (app/gallery/sealing.py); ``rotating``: plaintext rows beside the key are
    not (``encryption rotate`` is what seals them)."""
    gallery = Gallery.open(settings.resolved_database_url())
    try:
        gallery.sealing.cipher = cipher_from(
            settings.encryption_key.get_secret_value(),
            settings.encryption_key_file,
            settings.encryption_old_keys.get_secret_value(),
        )
        gallery.sealing.policy = check_keys(
            gallery.database.engine, gallery.sealing.cipher, rotating=rotating
        )
    except (EncryptionKeyError, OSError) as exc:
        gallery.close()
        raise NotReady(f"Encryption at rest: {exc}.") from exc
    if gallery.sealing.cipher is not None and (
        settings.vector_search == "pgvector" or table_exists(gallery.database)
    ):
        gallery.close()
        raise NotReady(
            "FACEVERIFY_ENCRYPTION_KEY cannot be combined with pgvector: PostgreSQL must "
            "search plaintext vectors. Set FACEVERIFY_VECTOR_SEARCH=memory (and drop the "
            "face_vectors table), or leave the key unset and encrypt at the database or "
            "disk level instead (docs/PRIVACY.md)."
        )
    return gallery


@dataclass
class Offline:
    """What the command line works with when no server runs: the gallery (its writes
    joined by the pgvector backend when there is one: an import's vectors go in with
    its faces), erasure (the index snapshots erased here: the running servers replay
    deletes from the change log), and the use cases on them."""

    gallery: Gallery
    erasure: Erasure
    collections: Collections
    subjects: SubjectRecords
    retention: Retention

    def close(self) -> None:
        self.gallery.close()


def offline(settings: Settings, *, dim: int | None = None, rotating: bool = False) -> Offline:
    """:class:`Offline` from settings; ``dim``: the running model's embedding length, to
    keep pgvector's table in step when there is one."""
    gallery = open_gallery(settings, rotating=rotating)
    if dim is not None:
        encoders = frozenset({encoder_model(settings).name})
        backend = pgvector_backend(settings, gallery, dim=dim, encoders=encoders)
        if backend is not None:
            gallery.mirror = backend.mirror
    erasure = Erasure(
        gallery.database,
        index_dir=settings.resolved_index_dir(),
        vacuum_delay=settings.erase_vacuum_seconds,
        vacuum_full=settings.erase_vacuum_full,
    )
    return Offline(
        gallery,
        erasure,
        Collections(gallery, erasure),
        SubjectRecords(gallery, erasure),
        Retention(gallery, erasure),
    )
