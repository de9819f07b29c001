"""Everything a running service needs, from settings alone: the models, the gallery, the
calibration, and where identify searches (the one place that chooses)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.errors import NotReady
from app.face import quality
from app.face.registry import build_pipeline, load_checked_weights
from app.face.weights import WeightFile
from app.gallery import pgvector
from app.gallery.crypto import EncryptionKeyError, cipher_from
from app.gallery.index import ExactIndex, VectorIndex
from app.gallery.sealing import check_keys
from app.gallery.search import GallerySearch, MemorySearch, PgvectorSearch
from app.gallery.snapshot import SnapshotDir, erase_all
from app.gallery.store import GalleryStore
from app.scoring.calibration import Calibration
from app.service.core import FaceService
from app.settings import Settings

log = logging.getLogger("faceverify.gallery")


def enable_vectors(store: GalleryStore, settings: Settings, dim: int) -> bool:
    """Keep pgvector's table in step with the faces when the settings ask for it and the
    database can (FACEVERIFY_VECTOR_SEARCH auto or pgvector); whether it is on."""
    if settings.vector_search == "memory":
        return False
    return store.enable_vectors(dim=dim, build_memory_mb=settings.pgvector_build_memory_mb)


def gallery_search(
    settings: Settings, store: GalleryStore, *, dim: int, encoders: frozenset[str]
) -> GallerySearch:
    """PostgreSQL with pgvector when the store keeps vectors of this length; else an
    index of each collection in this process, loaded in the background."""
    if store.vector_dim is not None and store.vector_dim == dim:
        return PgvectorSearch(store, encoders=encoders, ef_search=settings.pgvector_ef_search)
    if store.cipher is not None:
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
        store,
        dim=dim,
        encoders=encoders,
        wait_seconds=settings.inference_wait_seconds,
        factory=_index_factory(settings),
        snapshots=_snapshots(settings) if store.cipher is None else None,
        background=True,
    )


def _index_factory(settings: Settings) -> Callable[[int], VectorIndex]:
    if settings.memory_index == "exact":
        return ExactIndex
    from app.gallery.ann import AnnIndex

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
    pipeline = build_pipeline(settings, weights)
    # First use at start-up, not in the first request (first /compare 1.9x the steady
    # one before; docs/PERFORMANCE.md).
    quality.measure(pipeline.warm())
    calibration = Calibration.load(settings.resolved_calibration_file())
    store = open_store(settings)
    if store.cipher is None:
        if (
            not enable_vectors(store, settings, pipeline.dim)
            and settings.vector_search == "pgvector"
        ):
            raise NotReady(
                "FACEVERIFY_VECTOR_SEARCH=pgvector, but the database is not PostgreSQL "
                "with the vector extension (see docs/SCALING.md)."
            )
    search = gallery_search(settings, store, dim=pipeline.dim, encoders=pipeline.compatible)
    service = FaceService(
        settings=settings, pipeline=pipeline, store=store, calibration=calibration, search=search
    )
    return service, weights


def open_store(settings: Settings, *, rotating: bool = False) -> GalleryStore:
    """The gallery store the settings name, migrated, with its encryption key (refused
    with pgvector: PostgreSQL searches plaintext vectors; docs/PRIVACY.md). A wrong key
    is refused (app/gallery/sealing.py); ``rotating``: plaintext rows beside the key are
    not (``encryption rotate`` is what seals them)."""
    store = GalleryStore.open(settings.resolved_database_url())
    store.vacuum_delay = settings.erase_vacuum_seconds
    store.vacuum_full = settings.erase_vacuum_full
    try:
        store.cipher = cipher_from(
            settings.encryption_key.get_secret_value(),
            settings.encryption_key_file,
            settings.encryption_old_keys.get_secret_value(),
        )
        store.seal_policy = check_keys(store.engine, store.cipher, rotating=rotating)
    except (EncryptionKeyError, OSError) as exc:
        store.close()
        raise NotReady(f"Encryption at rest: {exc}.") from exc
    if store.cipher is not None and (
        settings.vector_search == "pgvector" or pgvector.table_exists(store.engine)
    ):
        store.close()
        raise NotReady(
            "FACEVERIFY_ENCRYPTION_KEY cannot be combined with pgvector: PostgreSQL must "
            "search plaintext vectors. Set FACEVERIFY_VECTOR_SEARCH=memory (and drop the "
            "face_vectors table), or leave the key unset and encrypt at the database or "
            "disk level instead (docs/PRIVACY.md)."
        )
    return store
