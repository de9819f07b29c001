"""1:1 and 1:N: verify, compare, identify (by photo or by a stored face). Each is a
short sequence of named steps; the probe's face comes from ProbeSteps, the subject's
faces from the cached reads, the decision from Decisions, and the retention rule keeps a
due subject from matching."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from app.face.pipeline import FacePipeline
from app.face.timing import Timings
from app.face.views import FAST, curve_for
from app.gallery import Gallery
from app.privacy.retention import Retention
from app.scoring.distance import distances
from app.scoring.openset import NEIGHBOURS
from app.service.decisions import Decisions
from app.service.probes import ProbeSteps
from app.service.rates import Rates
from app.service.results import (
    Candidate,
    CompareResult,
    IdentifyResult,
    ProbeFace,
    ProbeMode,
    VerifyResult,
)
from app.service.subject_cache import RecipeMemo, SubjectReads
from app.settings import Settings
from app.vectors import SubjectHit, VectorBackend


class Matching:
    """The matching use cases."""

    def __init__(
        self,
        *,
        settings: Settings,
        pipeline: FacePipeline,
        gallery: Gallery,
        vectors: VectorBackend,
        probes: ProbeSteps,
        decisions: Decisions,
        retention: Retention,
        rates: Rates,
        subjects: SubjectReads,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.gallery = gallery
        self.vectors = vectors
        self.probes = probes
        self.decisions = decisions
        self.retention = retention
        self.rates = rates
        self.subjects = subjects
        self.face_recipes = RecipeMemo(gallery)

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
        probe, embedding = self.probes.probe(image, timings, mode)
        with timings.measure("search_ms"):
            # Read again: a delete may have landed during inference.
            face_ids, known, recipes, times, version = self.subjects.read(collection, subject_id)
            # Past its retention or expiry: it never matches (SubjectExpired).
            self.retention.check_read(collection, subject_id, times, version)
            self.subjects.require_faces(subject_id, face_ids)
            max_fmr = self.rates.verify_max_fmr(collection, max_fmr, version)
            d = distances(embedding, known)
        if self.probes.near_threshold(d, mode):
            (embedding,) = self.probes.mirrored([probe], embedding[None], timings)
            with timings.measure("search_ms"):
                d = distances(embedding, known)
        best, curve = self._likeliest(d, recipes, mode)
        small = self.decisions.small(probe)
        result = self.decisions.match(float(d[best]), prior, curve, max_fmr, small=small)
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
        probe_recipe = self.probes.recipe(mode)
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
        probes, embeddings = self.probes.probes([image_a, image_b], timings, mode)

        def distance() -> float:
            return float(np.linalg.norm(embeddings[0].astype(np.float64) - embeddings[1]))

        if self.probes.near_threshold(np.array([distance()]), mode):
            embeddings = self.probes.mirrored(probes, embeddings, timings)
        recipe = self.probes.recipe(mode)
        small = self.decisions.small(*probes)
        match = self.decisions.match(distance(), prior, curve_for(recipe, recipe), small=small)
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
        probe, embedding = self.probes.probe(image, timings, mode)
        k = top_k or self.settings.identify_top_k
        # The open-set rule looks at the nearest NEIGHBOURS subjects whatever top_k is.
        fetch = max(k, NEIGHBOURS)
        with timings.measure("search_ms"):
            first, size = self.vectors.search(collection, embedding, fetch)
        hits: list[SubjectHit] = first
        if self.probes.near_threshold(np.array([h.distance for h in first[:k]]), mode):
            (embedding,) = self.probes.mirrored([probe], embedding[None], timings)
            # The mirror moves an embedding by hundredths: the nearest faces to the
            # new one are among those the first search looked at (its shortlist), so
            # they are re-scored exactly instead of searched for again (at 10M faces
            # a second IVF search cost as much as the first, ~30 ms).
            with timings.measure("search_ms"):
                hits = self.vectors.rescore(collection, embedding, first, fetch)
        with timings.measure("search_ms"):
            hits = self.retention.unexpired(
                collection, hits, lambda n: self.vectors.search(collection, embedding, n)[0], fetch
            )
        result = self._scored_candidates(
            collection, probe, self.probes.recipe(mode), hits, size, prior, timings, k, target
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
            subjects = self.vectors.subject_count(collection)
        small = self.decisions.small(probe)
        candidates = [
            Candidate(
                h.subject_id,
                h.face_id,
                self.decisions.match(
                    h.distance,
                    prior,
                    curve_for(recipes.get(h.face_id, FAST), probe_recipe),
                    small=small,
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
                small,
            )
        best = candidates[0] if decision is not None and decision.named else None
        return IdentifyResult(
            probe,
            candidates,
            best,
            size,
            timings,
            curve=curve,
            open_set=decision,
            fpir=fpir,
            small_probe=small,
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
            owner, embedding = self.gallery.faces.embedding(
                collection=collection, face_id=face_id, encoders=self.pipeline.compatible
            )
            self.retention.check_probe(collection, owner, face_id)
            k = top_k or self.settings.identify_top_k
            fetch = max(k, NEIGHBOURS)
            found, size = self.vectors.search(collection, embedding, fetch, exclude=face_id)
            hits = self.retention.unexpired(
                collection,
                found,
                lambda n: self.vectors.search(collection, embedding, n, exclude=face_id)[0],
                fetch,
            )
            query_recipe = self.face_recipes.of(collection, [face_id]).get(face_id, FAST)
        found_ = self._scored_candidates(
            collection, None, query_recipe, hits, size, prior, timings, k, target
        )
        return replace(found_, probe_subject=owner)
