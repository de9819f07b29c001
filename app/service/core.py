"""The use cases: enroll, verify, identify, compare, and the subject CRUD around them.

FaceService orchestrates; each job it relies on has its own module: the request gates
(gates.py), the enrollment rules (enrollment.py), the cached subject reads
(subjects.py), scoring by curve (decisions.py), the embedding recipes
(app/face/recipes.py) and where identify searches (app/gallery/search.py). Knows
nothing of HTTP.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.errors import NotReady
from app.face import quality
from app.face.detect import DetectedFace
from app.face.pipeline import FacePipeline
from app.face.recipes import Recipes
from app.face.timing import Timings
from app.face.views import FAST, curve_for, versioned
from app.gallery.index import SubjectHit
from app.gallery.records import Consent
from app.gallery.search import GallerySearch, MemorySearch
from app.gallery.store import (
    GalleryStore,
    IdempotencyClaim,
    IdempotencyKeyTaken,
    NewFace,
)
from app.gallery.trail import AuditTrail
from app.scoring.calibration import Calibration
from app.scoring.distance import distances
from app.scoring.openset import NEIGHBOURS
from app.service.decisions import Decisions
from app.service.enrollment import EnrollmentRules, all_known, request_digest
from app.service.gates import inference_slots, stop_if_expired
from app.service.probes import Probes
from app.service.rates import Rates
from app.service.records import GalleryRecords
from app.service.results import (
    Candidate,
    CompareResult,
    DetectResult,
    EnrollResult,
    FacePolicy,
    IdentifyResult,
    ProbeFace,
    ProbeMode,
    VerifyResult,
)
from app.service.retention import Retention
from app.service.subjects import RecipeMemo, SubjectReads
from app.service.upkeep import Upkeep
from app.settings import Settings


class FaceService(GalleryRecords, Probes):
    """The use cases; the subject and collection reads and deletes are GalleryRecords'."""

    def __init__(
        self,
        *,
        settings: Settings,
        pipeline: FacePipeline,
        store: GalleryStore,
        calibration: Calibration,
        search: GallerySearch | None = None,
    ) -> None:
        """``search``: where identify searches (default: an exact index of each
        collection in this process, loaded now; :func:`app.service.build_service` picks
        the configured one)."""
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.calibration = calibration
        self.search = search or MemorySearch(
            store,
            dim=pipeline.dim,
            encoders=pipeline.compatible,
            wait_seconds=settings.inference_wait_seconds,
        )
        self.recipes = Recipes(pipeline, settings.threshold, settings.mirror_margin)
        self.decisions = Decisions(settings, calibration, self.recipes.templates)
        self.rules = EnrollmentRules(settings, store, self.decisions.threshold)
        self.subjects = SubjectReads(store, dim=pipeline.dim, encoders=pipeline.compatible)
        self.face_recipes = RecipeMemo(store)
        self.slots = inference_slots(settings)
        self.retention = Retention(store, self.search)
        self.rates = Rates(settings, self.retention)
        # The audit trail (app/gallery/trail.py); its writer starts with the background work.
        self.audit = (
            AuditTrail(store.engine, fsync=settings.audit_fsync) if settings.audit_trail else None
        )
        self._upkeep: Upkeep | None = None

    def start_upkeep(self) -> None:
        """The audit writer; purge, prune and erase (app/service/upkeep.py)."""
        if self._upkeep is None:
            if self.audit is not None:
                self.audit.start()
            self._upkeep = Upkeep(self.settings, self.store, self.retention, self.audit)
            self._upkeep.start()

    def close(self) -> None:
        """Stop the background threads (the store stays open)."""
        if self._upkeep is not None:
            self._upkeep.stop()
            self._upkeep = None
        if self.audit is not None:
            self.audit.close()

    @property
    def index_ready(self) -> threading.Event:
        """Set once identify can search (the start-up load is done)."""
        return self.search.ready

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
        expires_at: datetime | None = None,
        consent: Consent | None = None,
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

        ``expires_at`` (in the future) and ``consent`` are stored with the subject; a
        collection that requires consent refuses a new subject without it before any
        photo is read (ConsentRequired). Adding to a subject past its retention is
        refused (SubjectExpired).
        """
        self.rules.check_count(images)
        self.retention.check_enrollment(collection, subject_id, add, expires_at, consent)
        claim = None
        if idempotency is not None:
            digest = request_digest(
                collection,
                subject_id,
                images,
                name,
                metadata,
                face_policy,
                add,
                expires_at,
                consent,
            )
            claim = IdempotencyClaim(*idempotency, digest)
            if (replay := self.rules.replay(claim)) is not None:
                return replay
        timings = Timings()
        chosen, embeddings = self._enrollment_faces(images, face_policy, timings)
        # The subject's faces, read once for both checks below.
        known = np.zeros((0, embeddings.shape[1]), dtype=np.float32)
        recipes: list[str] = []
        if add and (skip_known or not force):
            known, recipes = self.subjects.known(collection, subject_id)
        if skip_known and add and self._has_already(known, recipes, embeddings):
            subject = self.store.get_subject(collection=collection, subject_id=subject_id)
            return EnrollResult(subject=subject, faces=[], timings=timings)
        if not force:
            mine = self.pipeline.template
            self.rules.check_same_person(subject_id, known, recipes, embeddings, mine)
        stop_if_expired(committing=True)
        faces = [
            NewFace(embedding=e, box=f.box, detector_score=f.score)
            for f, e in zip(chosen, embeddings, strict=True)
        ]
        return self._store_faces(
            collection,
            subject_id,
            faces,
            add,
            claim,
            timings,
            {"name": name, "metadata": metadata, "expires_at": expires_at, "consent": consent},
        )

    def _enrollment_faces(
        self, images: list[bytes], policy: FacePolicy, timings: Timings
    ) -> tuple[list[DetectedFace], np.ndarray]:
        """Each image's face to store, checked, and their embeddings (the enrollment
        recipe); the first refusal stops it."""
        chosen: list[DetectedFace] = []
        with self.slots.hold():
            for number, data in enumerate(images):
                stop_if_expired()  # stop early: nobody waits for this answer any more
                faces = self._found(self.recipes.find_enrollment(data, timings), number)
                face = self.rules.chosen_face(faces, number, policy)
                self.rules.check_quality(face, number, timings)
                chosen.append(face)
            return chosen, self.recipes.embed_enrollment(chosen, timings)

    def _has_already(self, known: np.ndarray, recipes: list[str], new: np.ndarray) -> bool:
        """Whether every new face is one the subject has, made the same way (an older
        recipe's face of the same photo is not this one: re-enrolling is how a gallery
        gets templates)."""
        same_recipe = np.array([r == self.pipeline.template for r in recipes], dtype=bool)
        return all_known(known[same_recipe], new)

    def _store_faces(
        self,
        collection: str,
        subject_id: str,
        faces: list[NewFace],
        add: bool,
        claim: IdempotencyClaim | None,
        timings: Timings,
        about: dict[str, Any],
    ) -> EnrollResult:
        """Write the faces (with the idempotency record) and tell the search. ``about``:
        the subject's name, metadata, expires_at and consent."""
        try:
            stored, subject, version = self.store.add_faces(
                collection=collection,
                subject_id=subject_id,
                faces=faces,
                encoder=self.pipeline.encoder_name,
                pipeline_version=versioned(self.pipeline.version, self.pipeline.template),
                add=add,
                idempotency=claim,
                now=self.retention.clock(),
                **about,
            )
        except IdempotencyKeyTaken:
            # A concurrent request with the same key stored first; ours rolled back.
            assert claim is not None
            if (replay := self.rules.replay(claim)) is None:
                raise
            return replay
        embeddings = np.stack([f.embedding for f in faces])
        self.search.faces_added(collection, [f.id for f in stored], subject_id, embeddings)
        self.search.advanced(version)
        return EnrollResult(subject=subject, faces=stored, timings=timings)

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
        max_fmr: float | None = None,
    ) -> VerifyResult:
        """Compare the main face of ``image`` (:func:`main_face`) with the subject's
        enrolled face it most likely matches (the nearest, when all were made alike).
        ``mode``: how the photo is embedded (default: the setting); ``max_fmr``: a false
        match rate the decision must keep (no looser than the collection's)."""
        timings = Timings()
        mode = mode or self.settings.probe_mode
        if max_fmr is not None:  # refused before inference, not after
            self.rates.verify_max_fmr(collection, max_fmr)
        # Tell "unknown" from "known but every face deleted" before paying for inference;
        # a subject read before is not read again here: the read after inference decides.
        if not self.subjects.seen(collection, subject_id):
            self.subjects.enrolled(collection, subject_id)
        probe, embedding = self._probe(image, timings, mode)
        with timings.measure("search_ms"):
            # Read again: a delete may have landed during inference.
            face_ids, known, recipes, times, version = self.subjects.read(collection, subject_id)
            # Past its retention or expiry: it never matches (SubjectExpired).
            self.retention.check_read(collection, subject_id, times, version)
            self.subjects.require_faces(subject_id, face_ids)
            max_fmr = self.rates.verify_max_fmr(collection, max_fmr, version)
            d = distances(embedding, known)
        if self._near_threshold(d, mode):
            (embedding,) = self._mirrored([probe], embedding[None], timings)
            with timings.measure("search_ms"):
                d = distances(embedding, known)
        best, curve = self._likeliest(d, recipes, mode)
        result = self.decisions.match(float(d[best]), prior, curve, max_fmr)
        if result.match:
            self.retention.used(collection, subject_id)  # restarts its retention clock
        return VerifyResult(
            subject_id=subject_id,
            probe=probe,
            face_id=face_ids[best],
            result=result,
            timings=timings,
            mode=mode,
        )

    def _likeliest(self, d: np.ndarray, recipes: list[str], mode: ProbeMode) -> tuple[int, str]:
        """The face the photo most likely matches, and the curve that scores it. Faces
        embedded differently are scored on different curves: the likeliest is the one
        with the highest probability (with one curve: the nearest)."""
        probe_recipe = self._recipe(mode)
        curves = [self.decisions.curve(curve_for(r, probe_recipe)) for r in recipes]
        best = max(range(len(d)), key=lambda i: (float(curves[i].probability(d[i])), -d[i]))
        return best, curves[best].name

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

        if self._near_threshold(np.array([distance()]), mode):
            embeddings = self._mirrored(probes, embeddings, timings)
        recipe = self._recipe(mode)
        match = self.decisions.match(distance(), prior, curve_for(recipe, recipe))
        return CompareResult(probes[0], probes[1], match, timings, mode)

    # ---- 1:N -------------------------------------------------------------------------
    def identify(
        self,
        *,
        collection: str,
        image: bytes,
        top_k: int | None = None,
        prior: float | None = None,
        mode: ProbeMode | None = None,
        fpir: float | None = None,
    ) -> IdentifyResult:
        """The ``top_k`` subjects of the collection nearest to the photo's main face;
        ``best`` is the nearest only if the open-set rule names it at the collection's
        false-positive identification rate (or the stricter ``fpir``)."""
        timings = Timings()
        mode = mode or self.settings.probe_mode
        target = self.rates.identify_fpir(collection, fpir)
        probe, embedding = self._probe(image, timings, mode)
        k = top_k or self.settings.identify_top_k
        # The open-set rule looks at the nearest NEIGHBOURS subjects whatever top_k is.
        fetch = max(k, NEIGHBOURS)
        with timings.measure("search_ms"):
            first, size = self.search.search(collection, embedding, fetch)
        hits: list[SubjectHit] = first
        if self._near_threshold(np.array([h.distance for h in first[:k]]), mode):
            (embedding,) = self._mirrored([probe], embedding[None], timings)
            # The mirror moves an embedding by hundredths: the nearest faces to the
            # new one are among those the first search looked at (its shortlist), so
            # they are re-scored exactly instead of searched for again (at 10M faces
            # a second IVF search cost as much as the first, ~30 ms).
            with timings.measure("search_ms"):
                hits = self.search.rescore(collection, embedding, first, fetch)
        with timings.measure("search_ms"):
            hits = self.retention.unexpired(
                collection, hits, lambda n: self.search.search(collection, embedding, n)[0], fetch
            )
        result = self._scored_candidates(
            collection, probe, self._recipe(mode), hits, size, prior, timings, k, target
        )
        result.mode = mode
        return result

    def _scored_candidates(
        self,
        collection: str,
        probe: ProbeFace | None,
        probe_recipe: str,
        hits: list[SubjectHit],
        size: int,
        prior: float | None,
        timings: Timings,
        k: int,
        fpir: float,
    ) -> IdentifyResult:
        """The ``k`` nearest of ``hits``, each scored 1:1 on the curve its face's recipe
        calls for; ``best`` is the nearest only if the open-set rule names it."""
        with timings.measure("search_ms"):
            recipes = self.face_recipes.of(collection, [h.face_id for h in hits[:k]])
            subjects = self.search.subject_count(collection)
        candidates = [
            Candidate(
                h.subject_id,
                h.face_id,
                self.decisions.match(
                    h.distance, prior, curve_for(recipes.get(h.face_id, FAST), probe_recipe)
                ),
            )
            for h in hits[:k]
        ]
        curve = candidates[0].result.curve if candidates else curve_for(FAST, probe_recipe)
        decision = None
        if candidates:
            decision = self.decisions.open_set(
                [h.distance for h in hits[:NEIGHBOURS]],
                max(subjects, len(hits)),
                fpir,
                prior,
                curve,
                candidates[0].result.match,
            )
        best = candidates[0] if decision is not None and decision.named else None
        return IdentifyResult(
            probe, candidates, best, size, timings, curve=curve, open_set=decision, fpir=fpir
        )

    def identify_face(
        self,
        *,
        collection: str,
        face_id: str,
        top_k: int | None = None,
        prior: float | None = None,
        fpir: float | None = None,
    ) -> IdentifyResult:
        """Identify with a stored face instead of a photo (AWS SearchFaces): the nearest
        subjects to it, the face itself left out; its owner is used too (issue 37)."""
        timings = Timings()
        target = self.rates.identify_fpir(collection, fpir)
        with timings.measure("search_ms"):
            owner, embedding = self.store.face_embedding(
                collection=collection, face_id=face_id, encoders=self.pipeline.compatible
            )
            self.retention.check_probe(collection, owner, face_id)
            k = top_k or self.settings.identify_top_k
            fetch = max(k, NEIGHBOURS)
            found, size = self.search.search(collection, embedding, fetch, exclude=face_id)
            hits = self.retention.unexpired(
                collection,
                found,
                lambda n: self.search.search(collection, embedding, n, exclude=face_id)[0],
                fetch,
            )
            query_recipe = self.face_recipes.of(collection, [face_id]).get(face_id, FAST)
        found_ = self._scored_candidates(
            collection, None, query_recipe, hits, size, prior, timings, k, target
        )
        return replace(found_, probe_subject=owner)

    # ---- calibration -----------------------------------------------------------------
    def curve(self, name: str) -> Calibration:
        """The calibration curve ``name`` (Decisions.curve)."""
        return self.decisions.curve(name)

    def threshold(self, curve: str) -> float:
        """The decision threshold on ``curve`` (Decisions.threshold)."""
        return self.decisions.threshold(curve)

    def curves_in_use(self) -> tuple[str, ...]:
        return self.decisions.curves_in_use()

    def calibration_matches_pipeline(self) -> bool:
        return self.decisions.calibration_matches_pipeline()

    def curve_matches(self, name: str) -> bool:
        return self.decisions.curve_matches(name)

    def ready(self) -> None:
        """Raise NotReady unless the database answers (the models are loaded if this
        object exists)."""
        try:
            self.store.ping()
        except SQLAlchemyError as exc:
            raise NotReady(f"The database does not answer: {type(exc).__name__}") from exc
