"""The use cases: enroll, verify, identify, compare, and the subject CRUD around them.

Knows the face pipeline, the gallery and the calibration through their public functions;
knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.errors import (
    CollectionNotFound,
    CollectionProtected,
    FaceMismatch,
    FaceQualityTooLow,
    FaceTooSmall,
    IdempotencyKeyReused,
    IndexLoading,
    InvalidRequest,
    MultipleFaces,
    NoFace,
    NotReady,
    RequestCancelled,
    SubjectHasNoFaces,
    TooManyImages,
)
from app.face import quality
from app.face.cores import spare_cores, usable_cpus
from app.face.detect import DetectedFace, largest, main_face
from app.face.pipeline import Choose, FacePipeline
from app.face.quality import Assessment, FaceMeasures
from app.face.registry import build_pipeline, curve_fingerprint, load_checked_weights
from app.face.timing import Timings
from app.face.views import CURVES, FAST, curve_for, recipe_of, versioned
from app.face.weights import WeightFile
from app.gallery import pgvector
from app.gallery.index import ExactIndex, Hits, Partitions, SubjectHit, VectorIndex
from app.gallery.models import DEFAULT_COLLECTION
from app.gallery.snapshot import SnapshotDir
from app.gallery.store import (
    CollectionRecord,
    FaceRecord,
    GalleryStore,
    IdempotencyClaim,
    IdempotencyKeyTaken,
    NewFace,
    SubjectRecord,
)
from app.gallery.sync import GallerySync
from app.scoring.calibration import Calibration, matched_threshold
from app.scoring.distance import distances
from app.settings import Settings
from app.slots import FairSlots

log = logging.getLogger("faceverify.service")

# Two embeddings this close are the same face of the same photo (the pipeline is
# deterministic: re-running it gives the same embedding to ~1e-7).
KNOWN_FACE_DISTANCE = 1e-4

# identify's gallery_size with pgvector is a count of the collection refreshed this often.
DB_SIZE_TTL_SECONDS = 5.0
# Subjects whose faces verify keeps in memory while the gallery does not change (~1 KB
# a subject with two faces).
SUBJECT_CACHE_SIZE = 4096

FacePolicy = Literal["single", "largest"]
ProbeMode = Literal["fast", "thorough"]
# Face id -> template recipe, remembered (a stored face's recipe never changes).
RECIPE_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class ProbeFace:
    """The face a probe photo was compared by, how many the photo had, and its quality."""

    face: DetectedFace
    faces_detected: int
    quality: Assessment


@dataclass
class DetectResult:
    """Every face of a photo with its measures and quality (POST /detect)."""

    faces: list[tuple[DetectedFace, FaceMeasures, Assessment]]
    timings: Timings


@dataclass
class Match:
    distance: float
    score: float
    match: bool
    # Share of the calibration data's impostor pairs at or below this distance, with
    # the count and the total it rests on; None when the calibration has no FMR table.
    fmr: tuple[float, int, int] | None = None
    # The calibration curve that scored it (app/face/views.py CURVES) and its threshold.
    curve: str = FAST
    threshold: float = 0.6


@dataclass
class EnrollResult:
    subject: SubjectRecord
    faces: list[FaceRecord]
    timings: Timings
    # True when this is the stored answer to an earlier request with the same
    # Idempotency-Key (nothing new was stored).
    replayed: bool = False


class CommitGate:
    """Settles, once, the race between a request's writes and its timeout answer.

    The timeout (in the HTTP layer) calls :meth:`expire`; the work calls
    :meth:`begin_commit` just before it writes. Whichever comes first wins: an expired
    request stores nothing (so a 503 request_timeout never hides a stored enrollment,
    issue 9), and a request already committing is waited for and answered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "open"

    def begin_commit(self) -> bool:
        with self._lock:
            if self._state == "open":
                self._state = "committing"
            return self._state == "committing"

    def expire(self) -> bool:
        """True if the request may be answered as timed out (nothing will be stored)."""
        with self._lock:
            if self._state == "open":
                self._state = "expired"
            return self._state == "expired"

    @property
    def expired(self) -> bool:
        return self._state == "expired"


# The current request's gate, set by the HTTP layer; None outside a request (CLI, tests).
commit_gate: ContextVar[CommitGate | None] = ContextVar("commit_gate", default=None)


def _stop_if_expired(*, committing: bool = False) -> None:
    """Raise RequestCancelled if the request's timeout answer was sent; with
    ``committing``, also claim the gate, so the timeout can no longer win."""
    gate = commit_gate.get()
    if gate is None:
        return
    stopped = (not gate.begin_commit()) if committing else gate.expired
    if stopped:
        raise RequestCancelled("The request timed out; nothing was stored.")


@dataclass
class VerifyResult:
    subject_id: str
    probe: ProbeFace
    face_id: str
    result: Match
    timings: Timings
    mode: ProbeMode = "fast"


@dataclass
class CompareResult:
    probe_a: ProbeFace
    probe_b: ProbeFace
    result: Match
    timings: Timings
    mode: ProbeMode = "fast"


@dataclass
class Candidate:
    subject_id: str
    face_id: str
    result: Match


@dataclass
class IdentifyResult:
    # None for a search by a stored face.
    probe: ProbeFace | None
    candidates: list[Candidate]
    best: Candidate | None
    gallery_size: int
    timings: Timings = field(default_factory=Timings)
    mode: ProbeMode | None = None  # None for a search by a stored face
    # The curve a candidate would be scored with when there is none.
    curve: str = FAST


class FaceService:
    def __init__(
        self,
        *,
        settings: Settings,
        pipeline: FacePipeline,
        store: GalleryStore,
        calibration: Calibration,
        index_factory: Callable[[int], VectorIndex] = ExactIndex,
        snapshots: SnapshotDir | None = None,
        load_in_background: bool = False,
    ) -> None:
        """Each collection gets its own index from ``index_factory`` (default: exact
        search), filled from ``store`` (faces of the pipeline's model only) and kept
        current by replaying the store's change log. With ``load_in_background`` the
        index is filled by a thread, so a server answers at once at any gallery size:
        verify, enroll and the subject routes never use it; identify waits for it.
        With ``snapshots``, a large index is saved there and shared, memory-mapped, by
        the processes of the machine."""
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.indexes = Partitions(pipeline.dim, index_factory)
        self.gallery = GallerySync(store, self.indexes, pipeline.compatible, snapshots)
        self.calibration = calibration
        self.slots = FairSlots(
            settings.max_concurrent_inference,
            settings.inference_wait_seconds,
            reserve=settings.tenant_reserve_slots,
            bulk_limit=settings.bulk_slots or max(1, usable_cpus() - 1),
        )
        # PostgreSQL with pgvector searches itself: no index in this process, no replay.
        self.db_search = store.vector_dim is not None and store.vector_dim == pipeline.dim
        # Counts read from PostgreSQL: key -> (when read, value); see _recent.
        self._counts: dict[tuple[str, ...], tuple[float, int]] = {}
        self._subjects = VersionedCache(SUBJECT_CACHE_SIZE)
        self._recipes: OrderedDict[str, str] = OrderedDict()
        self._recipes_lock = threading.Lock()
        self._thresholds = {
            name: matched_threshold(calibration, self.curve(name), settings.threshold)
            for name in CURVES
        }
        self.index_ready = threading.Event()
        if self.db_search:
            self.index_ready.set()
        elif load_in_background:
            threading.Thread(target=self._load_index, name="index-load", daemon=True).start()
        else:
            self._load_index()

    def _load_index(self) -> None:
        started = time.perf_counter()
        while True:
            try:
                self.gallery.sync()
                break
            except SQLAlchemyError as exc:  # the database is down: try again, say so
                log.warning("loading the index failed (%s); retrying in 1 s", exc)
                time.sleep(1.0)
        self.index_ready.set()
        log.info(
            "index loaded: %d faces in %d collections in %.1f s",
            len(self.indexes),
            len(self.indexes.face_counts()),
            time.perf_counter() - started,
        )

    # ---- enroll ----------------------------------------------------------------------
    def enroll(
        self,
        *,
        collection: str,
        subject_id: str,
        images: list[bytes],
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        face_policy: FacePolicy = "single",
        add: bool = False,
        force: bool = False,
        idempotency: tuple[str, str] | None = None,
        skip_known: bool = False,
    ) -> EnrollResult:
        """Store one face per image: a new subject (``add=False``) or more faces of an
        existing one (``add=True``). Every image is checked before anything is stored:
        one bad photo stores nothing.

        Every face must match the subject: be within the threshold of one of its faces
        (the enrolled ones, or an earlier photo of this request), else FaceMismatch, so
        a key that may enroll cannot slip someone else's face into a subject (issue 9).
        ``force`` skips that check (the API allows it to admin keys only).

        ``idempotency`` is ``(owner, key)``: the first request with it stores and is
        remembered for 24 h with its result; a retry gets that result again.

        ``skip_known`` (with ``add``): when every face is one the subject already has
        (the same embedding: the pipeline is deterministic), store nothing and answer
        with no faces, so re-running a bulk enrollment doubles nothing.
        """
        if not images:
            raise InvalidRequest("Send at least one image to enroll.")
        if len(images) > self.settings.max_enroll_images:
            raise TooManyImages(
                f"{len(images)} photos in one enrollment; the cap is "
                f"{self.settings.max_enroll_images}.",
                max_images=self.settings.max_enroll_images,
            )
        claim = None
        if idempotency is not None:
            owner, key = idempotency
            claim = IdempotencyClaim(
                owner,
                key,
                _request_digest(collection, subject_id, images, name, metadata, face_policy, add),
            )
            replay = self._replay(claim)
            if replay is not None:
                return replay
        timings = Timings()
        chosen: list[DetectedFace] = []
        with self.slots.hold():
            for number, data in enumerate(images):
                _stop_if_expired()  # stop early: nobody waits for this answer any more
                faces = self._find(
                    data, timings, image_index=number, views=largest if self._templates else None
                )
                if len(faces) > 1 and face_policy == "single":
                    raise MultipleFaces(
                        f"Image {number} has {len(faces)} faces; enrollment needs exactly one. "
                        "Crop the photo, or send face=largest to use the largest face.",
                        image_index=number,
                        boxes=[f.box for f in faces],
                    )
                face = largest(faces)
                if face.side < self.settings.min_face_side:
                    raise FaceTooSmall(
                        f"The face in image {number} is {face.side} px wide; enrollment needs "
                        f"at least {self.settings.min_face_side} px.",
                        image_index=number,
                        box=face.box,
                        min_face_side=self.settings.min_face_side,
                    )
                self._check_quality(face, number, timings)
                chosen.append(face)
            embeddings = self.pipeline.embed(chosen, timings, thorough=self._templates)
        # The subject's faces, read once for both checks below.
        known = np.zeros((0, embeddings.shape[1]), dtype=np.float32)
        recipes: list[str] = []
        if add and (skip_known or not force):
            known, recipes = self._known_faces(collection, subject_id)
        # A face it "already has" was made the same way: an older recipe's face of the
        # same photo is not this one (re-enrolling is how a gallery gets templates).
        same_recipe = np.array([r == self.pipeline.template for r in recipes], dtype=bool)
        if skip_known and add and _all_known(known[same_recipe], embeddings):
            subject = self.store.get_subject(collection=collection, subject_id=subject_id)
            return EnrollResult(subject=subject, faces=[], timings=timings)
        if not force:
            self._check_same_person(subject_id, known, recipes, embeddings)
        _stop_if_expired(committing=True)
        try:
            stored, subject, version = self.store.add_faces(
                collection=collection,
                subject_id=subject_id,
                name=name,
                metadata=metadata,
                faces=[
                    NewFace(embedding=e, box=f.box, detector_score=f.score)
                    for f, e in zip(chosen, embeddings, strict=True)
                ],
                encoder=self.pipeline.encoder_name,
                pipeline_version=versioned(self.pipeline.version, self.pipeline.template),
                add=add,
                idempotency=claim,
            )
        except IdempotencyKeyTaken:
            # A concurrent request with the same key stored first; ours rolled back.
            assert claim is not None
            replay = self._replay(claim)
            if replay is None:
                raise
            return replay
        if not self.db_search:
            self.indexes.writable(collection).add(
                [f.id for f in stored], [subject_id] * len(stored), embeddings
            )
            self.gallery.advance(version)
        return EnrollResult(subject=subject, faces=stored, timings=timings)

    def _check_quality(self, face: DetectedFace, number: int, timings: Timings) -> None:
        """Refuse an enrollment face under the quality floor, saying why (a poor
        enrollment photo is where most false rejections start)."""
        floor = self.settings.enroll_min_quality
        if not floor:
            return
        with timings.measure("quality_ms"):
            assessed = quality.assess(quality.measure(face))
        if assessed.quality >= floor:
            return
        # Many small penalties can add up with none large enough to be a reason.
        reasons = list(assessed.reasons) or ["low_quality"]
        advice = assessed.advice or ["Use a sharp, well-lit, frontal photo."]
        raise FaceQualityTooLow(
            f"The face in image {number} has quality {assessed.quality:g} of 100; enrollment "
            f"needs at least {floor:g}. " + " ".join(advice),
            image_index=number,
            quality=assessed.quality,
            min_quality=floor,
            reasons=reasons,
            advice=advice,
        )

    def _known_faces(self, collection: str, subject_id: str) -> tuple[np.ndarray, list[str]]:
        """The subject's embeddings and their recipes; none when every face was deleted
        (the first new photo then starts afresh). SubjectNotFound if there is no such
        subject."""
        try:
            _, known, recipes = self._enrolled(collection, subject_id)
            return known, recipes
        except SubjectHasNoFaces:
            return np.zeros((0, self.pipeline.dim), dtype=np.float32), []

    def _check_same_person(
        self, subject_id: str, known: np.ndarray, recipes: list[str], embeddings: np.ndarray
    ) -> None:
        """Each new face must be within the threshold of one of the subject's enrolled
        faces (``known``, made with ``recipes``) or of an earlier photo in this request,
        each pair judged by the threshold of its curve."""
        mine = self.pipeline.template
        for number, embedding in enumerate(embeddings):
            if len(known):
                d = distances(embedding, known)
                limits = np.array([self.threshold(curve_for(mine, r)) for r in recipes])
                nearest = int(np.argmin(d - limits))
                if d[nearest] > limits[nearest]:
                    raise FaceMismatch(
                        f"The face in image {number} is {d[nearest]:.3f} from the nearest "
                        f"face of subject {subject_id!r} (threshold {limits[nearest]:g}): "
                        "it does not look like the same person. An admin key may send "
                        "force=true to store it anyway.",
                        image_index=number,
                        distance=round(float(d[nearest]), 6),
                        threshold=float(limits[nearest]),
                    )
            known = np.vstack([known, embedding[None]])
            recipes = [*recipes, mine]

    def _replay(self, claim: IdempotencyClaim) -> EnrollResult | None:
        record = self.store.find_idempotent(owner=claim.owner, key=claim.key)
        if record is None:
            return None
        if record.request_sha256 != claim.request_sha256:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for a different request; use a new key for "
                "a new enrollment.",
            )
        where = {"collection": record.collection, "subject_id": record.subject_id}
        subject = self.store.get_subject(**where)
        wanted = set(record.face_ids)
        faces = [f for f in self.store.list_faces(**where) if f.id in wanted]
        return EnrollResult(subject=subject, faces=faces, timings=Timings(), replayed=True)

    # ---- quality -----------------------------------------------------------------------
    def detect(self, *, image: bytes) -> DetectResult:
        """Every face in the photo (the full search, as enrollment looks), with its
        landmarks, pose, size, measures and quality; nothing is encoded or stored."""
        timings = Timings()
        with self.slots.hold():
            faces = self.pipeline.find_faces(image, timings)
            out = []
            with timings.measure("quality_ms"):
                for face in faces:
                    measures = quality.measure(face)
                    out.append((face, measures, quality.assess(measures)))
        return DetectResult(out, timings)

    # ---- 1:1 -------------------------------------------------------------------------
    def verify(
        self,
        *,
        collection: str,
        subject_id: str,
        image: bytes,
        prior: float | None = None,
        mode: ProbeMode | None = None,
    ) -> VerifyResult:
        """Compare the main face of ``image`` (:func:`main_face`) with the subject's
        enrolled face it most likely matches (the nearest, when all were made alike).
        ``mode``: how the photo is embedded (default: the setting)."""
        timings = Timings()
        mode = mode or self.settings.probe_mode
        # Tell "unknown" from "known but every face deleted" before paying for inference;
        # a subject read before is not read again here: the read after inference decides.
        if not self._subjects.holds((collection, subject_id)):
            self._enrolled(collection, subject_id)
        probe, embedding = self._probe(image, timings, mode)
        with timings.measure("search_ms"):
            # Read again: a delete may have landed during inference.
            face_ids, known, recipes = self._enrolled(collection, subject_id)
            d = distances(embedding, known)
        if self._undecided(d, mode):
            (embedding,) = self._mirrored([probe], embedding[None], timings)
            with timings.measure("search_ms"):
                d = distances(embedding, known)
        probe_recipe = self._recipe(mode)
        curves = [self.curve(curve_for(recipe, probe_recipe)) for recipe in recipes]
        # Faces embedded differently are scored on different curves: the one the photo
        # most likely matches is the one with the highest probability (with one curve:
        # the nearest). Only that one is scored in full.
        best = max(range(len(d)), key=lambda i: (float(curves[i].probability(d[i])), -d[i]))
        return VerifyResult(
            subject_id=subject_id,
            probe=probe,
            face_id=face_ids[best],
            result=self._match(float(d[best]), prior, curves[best].name),
            timings=timings,
            mode=mode,
        )

    def _db_collection_size(self, collection: str) -> int:
        """How many faces identify searched, in PostgreSQL (a count over millions of
        rows costs more than the search, so it is read at most every few seconds)."""
        return self._recent(
            ("size", collection),
            lambda: pgvector.collection_size(
                self.store.engine, collection=collection, encoders=self.pipeline.compatible
            ),
        )

    def _ef_search(self) -> int:
        """hnsw.ef_search for the next search: the setting, or by the graph's size
        (read at most every few seconds)."""
        if self.settings.pgvector_ef_search:
            return self.settings.pgvector_ef_search
        graph = self._recent(("graph",), lambda: pgvector.graph_size(self.store.engine))
        return pgvector.ef_search_for(graph)

    def _recent(self, key: tuple[str, ...], read: Callable[[], int]) -> int:
        """``read()``, or its value from under DB_SIZE_TTL_SECONDS ago."""
        now = time.monotonic()
        cached = self._counts.get(key)
        if cached is None or now - cached[0] > DB_SIZE_TTL_SECONDS:
            cached = self._counts[key] = (now, read())
        return cached[1]

    def _enrolled(
        self, collection: str, subject_id: str
    ) -> tuple[list[str], np.ndarray, list[str]]:
        """The subject's faces of this model and their template recipes, read by key from
        the store (the truth), so verify never waits for or depends on the size of the
        1:N index. A subject read at the gallery version that is still current is
        answered from memory (any write anywhere bumps the version, so a cached answer
        is never stale)."""
        version = self.store.version()
        key = (collection, subject_id)
        cached = self._subjects.get(key, version)
        if cached is not None:
            face_ids, known, recipes = cached
        else:
            face_ids, known, versions = self.store.subject_embeddings(
                collection=collection,
                subject_id=subject_id,
                dim=self.pipeline.dim,
                encoders=self.pipeline.compatible,
            )
            recipes = [recipe_of(v) for v in versions]
            self._subjects.put(key, version, (face_ids, known, recipes))
        if not face_ids:
            raise SubjectHasNoFaces(
                f"Subject {subject_id!r} has no enrolled faces to compare with.",
                subject_id=subject_id,
            )
        return face_ids, known, recipes

    def compare(
        self,
        *,
        image_a: bytes,
        image_b: bytes,
        prior: float | None = None,
        mode: ProbeMode | None = None,
    ) -> CompareResult:
        """Distance and score between the main faces of two photos; stores nothing."""
        timings = Timings()
        mode = mode or self.settings.probe_mode
        probes, embeddings = self._probes([image_a, image_b], timings, mode)

        def distance() -> float:
            return float(np.linalg.norm(embeddings[0].astype(np.float64) - embeddings[1]))

        if self._undecided(np.array([distance()]), mode):
            embeddings = self._mirrored(probes, embeddings, timings)
        probe_a, probe_b = probes
        recipe = self._recipe(mode)
        match = self._match(distance(), prior, curve_for(recipe, recipe))
        return CompareResult(probe_a, probe_b, match, timings, mode)

    # ---- 1:N -------------------------------------------------------------------------
    def identify(
        self,
        *,
        collection: str,
        image: bytes,
        top_k: int | None = None,
        prior: float | None = None,
        mode: ProbeMode | None = None,
    ) -> IdentifyResult:
        """The ``top_k`` subjects of the collection nearest to the photo's main face;
        ``best`` is the nearest only if it passes the threshold."""
        timings = Timings()
        mode = mode or self.settings.probe_mode
        probe, embedding = self._probe(image, timings, mode)
        k = top_k or self.settings.identify_top_k
        with timings.measure("search_ms"):
            self._wait_for_index()
            first, size = self._search(collection, embedding, k)
        hits: list[SubjectHit] = first
        if self._undecided(np.array([h.distance for h in first]), mode):
            (embedding,) = self._mirrored([probe], embedding[None], timings)
            # The mirror moves an embedding by hundredths: the nearest faces to the
            # new one are among those the first search looked at (its shortlist), so
            # they are re-scored exactly instead of searched for again (at 10M faces
            # a second IVF search cost as much as the first, ~30 ms).
            with timings.measure("search_ms"):
                hits = self._rescore(collection, embedding, first, k)
        result = self._identified(collection, probe, self._recipe(mode), hits, size, prior, timings)
        result.mode = mode
        return result

    def _identified(
        self,
        collection: str,
        probe: ProbeFace | None,
        probe_recipe: str,
        hits: list[SubjectHit],
        size: int,
        prior: float | None,
        timings: Timings,
    ) -> IdentifyResult:
        """Scored candidates, each on the curve its face's recipe calls for; ``best`` is
        the nearest only if it passes the threshold."""
        with timings.measure("search_ms"):
            recipes = self._face_recipes(collection, [h.face_id for h in hits])
        candidates = [
            Candidate(
                h.subject_id,
                h.face_id,
                self._match(
                    h.distance, prior, curve_for(recipes.get(h.face_id, FAST), probe_recipe)
                ),
            )
            for h in hits
        ]
        best = candidates[0] if candidates and candidates[0].result.match else None
        curve = candidates[0].result.curve if candidates else curve_for(FAST, probe_recipe)
        return IdentifyResult(probe, candidates, best, size, timings, curve=curve)

    def _face_recipes(self, collection: str, face_ids: list[str]) -> dict[str, str]:
        """Each stored face's template recipe (remembered: it never changes)."""
        with self._recipes_lock:
            known = {f: self._recipes[f] for f in face_ids if f in self._recipes}
        missing = [f for f in face_ids if f not in known]
        if missing:
            versions = self.store.pipeline_versions(collection=collection, face_ids=missing)
            read = {f: recipe_of(v) for f, v in versions.items()}
            with self._recipes_lock:
                self._recipes.update(read)
                while len(self._recipes) > RECIPE_CACHE_SIZE:
                    self._recipes.popitem(last=False)
            known.update(read)
        return known

    def identify_face(
        self,
        *,
        collection: str,
        face_id: str,
        top_k: int | None = None,
        prior: float | None = None,
    ) -> IdentifyResult:
        """Identify with a stored face instead of a photo (AWS SearchFaces): the nearest
        subjects to it, the face itself left out (its subject's other faces count)."""
        timings = Timings()
        with timings.measure("search_ms"):
            _, embedding = self.store.face_embedding(
                collection=collection, face_id=face_id, encoders=self.pipeline.compatible
            )
            self._wait_for_index()
            k = top_k or self.settings.identify_top_k
            hits, size = self._search(collection, embedding, k, exclude=face_id)
            query_recipe = self._face_recipes(collection, [face_id]).get(face_id, FAST)
        return self._identified(collection, None, query_recipe, hits, size, prior, timings)

    def _wait_for_index(self) -> None:
        if not self.index_ready.wait(self.settings.inference_wait_seconds):
            raise IndexLoading(
                "The 1:N index is still loading after start-up; retry shortly "
                "(verify works meanwhile).",
                retry_after=2,
            )

    def _search(
        self, collection: str, embedding: np.ndarray, k: int, exclude: str | None = None
    ) -> tuple[Hits, int]:
        """The nearest subjects and how many faces were searched: in PostgreSQL with
        pgvector, else in this process's index of the collection."""
        if self.db_search:
            encoders = self.pipeline.compatible
            hits = pgvector.search(
                self.store.engine,
                collection=collection,
                query=embedding,
                k=k,
                encoders=encoders,
                exclude=exclude,
                ef_search=self._ef_search(),
            )
            return hits, self._db_collection_size(collection)
        self._sync(collection)
        index = self.indexes.get(collection)
        return index.search(embedding, k, exclude=exclude), len(index)

    def _rescore(
        self, collection: str, embedding: np.ndarray, previous: Hits, k: int
    ) -> list[SubjectHit]:
        """:meth:`_search` for an embedding near the one that gave ``previous``."""
        if self.db_search:
            return pgvector.rescore(
                self.store.engine,
                collection=collection,
                query=embedding,
                previous=previous,
                k=k,
                encoders=self.pipeline.compatible,
            )
        self._sync(collection)
        return self.indexes.get(collection).rescore(embedding, previous, k)

    def _sync(self, collection: str) -> None:
        """Bring the index up to the store's version; wait while ``collection`` itself
        is reloaded after an import (another collection's reload is not waited for)."""
        self.gallery.sync()
        if not self.gallery.wait_for(collection, self.settings.inference_wait_seconds):
            raise IndexLoading(
                f"Collection {collection!r} is being reloaded after an import; retry "
                "shortly (verify works meanwhile).",
                retry_after=2,
            )

    # ---- subjects --------------------------------------------------------------------
    def get_subject(
        self, *, collection: str, subject_id: str
    ) -> tuple[SubjectRecord, list[FaceRecord]]:
        subject = self.store.get_subject(collection=collection, subject_id=subject_id)
        return subject, self.store.list_faces(collection=collection, subject_id=subject_id)

    def list_subjects(
        self, *, collection: str, offset: int, limit: int, prefix: str | None = None
    ) -> tuple[list[SubjectRecord], int]:
        return self.store.list_subjects(
            collection=collection, offset=offset, limit=limit, prefix=prefix
        )

    def delete_subject(self, *, collection: str, subject_id: str) -> int:
        """Delete the subject and every embedding of it, from the database and from this
        process's index, before returning. Returns how many faces were deleted."""
        face_ids, version = self.store.delete_subject(collection=collection, subject_id=subject_id)
        self.indexes.get(collection).remove_subject(subject_id)
        self.gallery.advance(version)
        return len(face_ids)

    def delete_face(self, *, collection: str, subject_id: str, face_id: str) -> None:
        version = self.store.delete_face(
            collection=collection, subject_id=subject_id, face_id=face_id
        )
        self.indexes.get(collection).remove_faces([face_id])
        self.gallery.advance(version)

    # ---- collections -----------------------------------------------------------------
    def create_collection(self, *, collection: str) -> CollectionRecord:
        return self.store.create_collection(collection=collection)

    def list_collections(self) -> list[CollectionRecord]:
        return self.store.list_collections()

    def get_collection(self, *, collection: str) -> CollectionRecord:
        return self.store.get_collection(collection=collection)

    def require_collection(self, collection: str) -> None:
        """CollectionNotFound unless the collection exists. The default one always does
        (migration 0003 makes it; delete_collection refuses it), so the common request
        skips a query (~0.4 ms under load, holding the GIL)."""
        if collection == DEFAULT_COLLECTION:
            return
        if not self.store.collection_exists(collection=collection):
            raise CollectionNotFound.for_id(collection)

    def delete_collection(
        self, *, collection: str, env_key_hashes: Collection[str] = ()
    ) -> CollectionRecord:
        """Delete a collection, every subject and embedding of it and the keys bound to
        it, from the database and this process's index, before returning; the other
        processes replay the deletion before their next search."""
        if collection == DEFAULT_COLLECTION:
            raise CollectionProtected(
                f"The {DEFAULT_COLLECTION!r} collection cannot be deleted: requests that "
                "name no collection use it. Delete its subjects instead.",
                collection=collection,
            )
        record, version = self.store.delete_collection(
            collection=collection, env_key_hashes=env_key_hashes
        )
        self.indexes.drop(collection)
        self.gallery.advance(version)
        return record

    def gallery_counts(self, collection: str | None = None) -> dict[str, int]:
        """Faces and subjects of the running model: of one collection, or of all (while
        the index loads: what is loaded so far)."""
        if self.db_search:
            per = pgvector.counts(self.store.engine, encoders=self.pipeline.compatible)
            picked = [per.get(collection, (0, 0))] if collection is not None else per.values()
            return {"faces": sum(f for f, _ in picked), "subjects": sum(n for _, n in picked)}
        if self.index_ready.is_set():
            self.gallery.sync()
        if collection is not None:
            self.gallery.wait_for(collection, self.settings.inference_wait_seconds)
            index = self.indexes.get(collection)
            return {"faces": len(index), "subjects": index.subject_count}
        return {
            "faces": len(self.indexes),
            "subjects": sum(self.indexes.subject_counts().values()),
        }

    def collection_face_counts(self) -> dict[str, int]:
        """Faces of the running model per collection (those with any)."""
        if self.db_search:
            per = pgvector.counts(self.store.engine, encoders=self.pipeline.compatible)
            return {name: faces for name, (faces, _) in per.items() if faces}
        if self.index_ready.is_set():
            self.gallery.sync()
        return self.indexes.face_counts()

    # ---- helpers ---------------------------------------------------------------------
    def _find(
        self,
        data: bytes,
        timings: Timings,
        *,
        image_index: int | None = None,
        quick: bool = False,
        views: Choose | None = None,
    ) -> list[DetectedFace]:
        faces = self.pipeline.find_faces(data, timings, quick=quick, views=views)
        if not faces:
            where = "the image" if image_index is None else f"image {image_index}"
            side = self.settings.min_face_side
            raise NoFace(
                f"No face was found in {where}. Use a sharper, frontal photo"
                + (f" where the face is at least {side} px wide." if side else "."),
                image_index=image_index,
            )
        return faces

    @property
    def _templates(self) -> bool:
        """Whether faces are enrolled as templates of several views."""
        return self.pipeline.template != FAST

    def _recipe(self, mode: ProbeMode) -> str:
        """The recipe a probe embedded in ``mode`` is made with."""
        return self.pipeline.template if mode == "thorough" else FAST

    def _probe(
        self, data: bytes, timings: Timings, mode: ProbeMode
    ) -> tuple[ProbeFace, np.ndarray]:
        (probe,), embeddings = self._probes([data], timings, mode)
        return probe, embeddings[0]

    def _probes(
        self, images: list[bytes], timings: Timings, mode: ProbeMode
    ) -> tuple[list[ProbeFace], np.ndarray]:
        """Each photo's main face, all encoded in one batch. Fast: the chip alone when
        probes may skip the mirror pass (then :meth:`_undecided` says when they may not
        and :meth:`_mirrored` adds it). Thorough: the template recipe's views."""
        thorough = mode == "thorough" and self._templates
        with self.slots.hold():
            found = []
            for number, data in enumerate(images):
                faces = self._find(
                    data,
                    timings,
                    image_index=number if len(images) > 1 else None,
                    quick=True,
                    views=main_face if thorough else None,
                )
                found.append((main_face(faces), len(faces)))
            mains = [face for face, _ in found]

            def grade() -> list[Assessment]:
                with timings.measure("quality_ms"):
                    return [quality.assess(quality.measure(face)) for face in mains]

            def embed() -> np.ndarray:
                if thorough:
                    return self.pipeline.embed(mains, timings, thorough=True)
                mirror = False if self._skips_mirror else None
                return self.pipeline.embed(mains, timings, mirror=mirror)

            # The quality score needs only the chip: on a spare core, it costs no time.
            assessed, embeddings = spare_cores().beside(grade, embed)
        probes = [
            ProbeFace(face, count, assessment)
            for (face, count), assessment in zip(found, assessed, strict=True)
        ]
        return probes, embeddings

    @property
    def _skips_mirror(self) -> bool:
        return self.pipeline.flip_average and self.settings.mirror_margin < 2

    def _undecided(self, d: np.ndarray, mode: ProbeMode) -> bool:
        """Whether a fast probe's single-pass distances ``d`` lie so near the threshold
        that the mirror pass must settle them (on lfw-devtrain it moved a distance by
        0.008 median, 0.078 at most; far from the threshold the decision cannot change
        and the percent moves a fraction of a point: benchmarks/flip_skip.py,
        docs/PERFORMANCE.md)."""
        if mode == "thorough" and self._templates:
            return False  # a thorough probe has every view already
        if not self._skips_mirror or not len(d):
            return False
        # Against templates the threshold moves by hundredths, well inside the margin.
        return bool(np.any(np.abs(d - self.settings.threshold) <= self.settings.mirror_margin))

    def _mirrored(
        self, probes: list[ProbeFace], single: np.ndarray, timings: Timings
    ) -> np.ndarray:
        with self.slots.hold():
            return self.pipeline.add_mirror([p.face for p in probes], single, timings)

    def curve(self, name: str) -> Calibration:
        """The calibration curve ``name``; the fast one when the file has no such curve
        (:meth:`calibration_matches_pipeline` is then False, and answers name the curve
        that scored them)."""
        return self.calibration.curve(name) or self.calibration

    def threshold(self, curve: str) -> float:
        """The decision threshold on ``curve``: FACEVERIFY_THRESHOLD on the fast curve;
        on the others the distance with the same false match rate on their calibration
        data (:func:`matched_threshold`)."""
        return self._thresholds[curve]

    def _match(self, distance: float, prior: float | None, curve: str = FAST) -> Match:
        calibration = self.curve(curve)
        threshold = self.threshold(calibration.name)
        return Match(
            distance=round(distance, 6),
            score=calibration.percent(distance, prior),
            match=distance <= threshold,
            threshold=threshold,
            fmr=calibration.fmr(distance),
            curve=calibration.name,
        )

    def curves_in_use(self) -> tuple[str, ...]:
        """The curves this configuration scores with: fast always (compare, and faces
        enrolled before templates); mixed and thorough once templates are on."""
        return CURVES if self._templates else (FAST,)

    def calibration_matches_pipeline(self) -> bool:
        """Whether every curve in use was fitted with this pipeline's settings (a
        provisional calibration matches nothing)."""
        return all(self.curve_matches(name) for name in self.curves_in_use())

    def curve_matches(self, name: str) -> bool:
        """Whether the file has curve ``name``, fitted with this pipeline's settings."""
        curve = self.calibration.curve(name)
        return curve is not None and curve.pipeline == curve_fingerprint(self.settings, name)

    def ready(self) -> None:
        """Raise NotReady unless the database answers (the models are loaded if this
        object exists)."""
        try:
            self.store.ping()
        except SQLAlchemyError as exc:
            raise NotReady(f"The database does not answer: {type(exc).__name__}") from exc


def _all_known(known: np.ndarray, embeddings: np.ndarray) -> bool:
    """Every new face is one the subject already has (the same embedding)."""
    if not len(known):
        return False
    # Differences, not the expanded |a|^2 + |b|^2 - 2ab of distances(): that loses ~5e-4
    # to float32 cancellation right where this looks.
    exact = known.astype(np.float64)
    return all(
        float(np.linalg.norm(exact - e, axis=1).min()) < KNOWN_FACE_DISTANCE for e in embeddings
    )


def _request_digest(
    collection: str,
    subject_id: str,
    images: list[bytes],
    name: str | None,
    metadata: dict[str, Any] | None,
    face_policy: str,
    add: bool,
) -> str:
    """What makes two enrollments "the same request" for an Idempotency-Key."""
    digest = hashlib.sha256()
    fields = [collection, subject_id, name, metadata, face_policy, add]
    digest.update(json.dumps(fields, sort_keys=True).encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()


class VersionedCache:
    """A bounded LRU map whose entries are valid only at the gallery version they were
    read at: reading the version (one row) is ~5x cheaper than reading a subject's faces.
    Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[Any, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, version: int) -> Any | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None or found[0] != version:
                return None
            self._entries.move_to_end(key)
            return found[1]

    def holds(self, key: Any) -> bool:
        """Whether ``key`` was read at some version (current or not)."""
        with self._lock:
            return key in self._entries

    def put(self, key: Any, version: int, value: Any) -> None:
        """Store ``value`` as read at ``version`` (read the version before the value: a
        write in between then leaves the entry already out of date, never wrong)."""
        with self._lock:
            self._entries[key] = (version, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


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
    """Load and check the models, open (and migrate) the gallery and the calibration:
    everything a running service needs, from settings alone."""
    weights = load_checked_weights(settings)
    pipeline = build_pipeline(settings, weights)
    # First use at start-up, not in the first request (first /compare 1.9x the steady
    # one before; docs/PERFORMANCE.md).
    quality.measure(pipeline.warm())
    calibration = Calibration.load(settings.resolved_calibration_file())
    store = GalleryStore.open(settings.resolved_database_url())
    if settings.vector_search != "memory":
        enabled = store.enable_vectors(
            dim=pipeline.dim, build_memory_mb=settings.pgvector_build_memory_mb
        )
        if settings.vector_search == "pgvector" and not enabled:
            raise NotReady(
                "FACEVERIFY_VECTOR_SEARCH=pgvector, but the database is not PostgreSQL "
                "with the vector extension (see docs/SCALING.md)."
            )
    service = FaceService(
        settings=settings,
        pipeline=pipeline,
        store=store,
        calibration=calibration,
        index_factory=_index_factory(settings),
        snapshots=_snapshots(settings),
        load_in_background=True,
    )
    return service, weights
