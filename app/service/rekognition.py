"""What the Rekognition-compatible API (app/api/rekognition) needs of the service
beyond verify, identify and detect: IndexFaces, DeleteFaces, ListFaces, CompareFaces
against every face of a photo, and the users (issue 40).

Each face indexed through IndexFaces is a subject of its own whose id is the face's id
(FaceId), with ExternalImageId and ImageId in the subject's metadata: so a search by
photo names the same faces /identify names, and every rule that holds for a subject
(consent, retention, erasure, the audit trail) holds for these faces.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.errors import FaceNotFound, SubjectNotFound
from app.face import quality
from app.face.detect import DetectedFace
from app.face.pipeline import FacePipeline, every
from app.face.quality import Assessment, FaceMeasures
from app.face.recipes import Recipes
from app.face.timing import Timings
from app.face.views import curve_for, recipe_of, versioned
from app.gallery import Consent, Gallery, NewFace
from app.gallery.users import ListedFace
from app.privacy.erasure import Erasure
from app.privacy.events import entry
from app.privacy.retention import Retention
from app.privacy.rules import enrollment_rules, require_consent
from app.service.decisions import Decisions
from app.service.gates import stop_if_expired
from app.service.probes import ProbeSteps
from app.service.results import Match, ProbeFace, ProbeMode
from app.settings import Settings
from app.slots import FairSlots

# The metadata key the Rekognition API keeps a face's ExternalImageId and ImageId under.
META = "rekognition"
# Rekognition's reasons for a face not indexed or not searched (quality.CHECKS has the
# hard limits' own): too many faces, or not the largest (search looks at the largest).
EXCEEDS_MAX_FACES = "EXCEEDS_MAX_FACES"
FACE_NOT_LARGEST = "FACE_NOT_LARGEST"


@dataclass(frozen=True)
class SeenFace:
    """A face of a photo with its measures, quality and the hard limits it fails."""

    face: DetectedFace
    measures: FaceMeasures
    assessment: Assessment
    checks: tuple[str, ...]

    @property
    def reasons(self) -> list[str]:
        return [quality.CHECKS[c] for c in self.checks]


@dataclass
class IndexResult:
    indexed: list[tuple[str, SeenFace]]
    unindexed: list[tuple[SeenFace, list[str]]]
    image_id: str
    frame: tuple[int, int]
    timings: Timings = field(default_factory=Timings)


@dataclass
class CompareFacesResult:
    source: ProbeFace
    targets: list[tuple[ProbeFace, Match]]
    timings: Timings


def seen(face: DetectedFace, min_inter_eye: float) -> SeenFace:
    measures = quality.measure(face)
    return SeenFace(
        face, measures, quality.assess(measures), quality.checks(measures, min_inter_eye)
    )


def by_size(faces: list[DetectedFace]) -> list[DetectedFace]:
    """Largest first (Rekognition indexes and searches the largest faces)."""
    return sorted(faces, key=lambda f: -f.box.area)


class RekognitionFaces:
    """The Rekognition API's use cases that faceverify's own API does not have."""

    def __init__(
        self,
        *,
        settings: Settings,
        pipeline: FacePipeline,
        gallery: Gallery,
        recipes: Recipes,
        probes: ProbeSteps,
        decisions: Decisions,
        retention: Retention,
        erasure: Erasure,
        slots: FairSlots,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.gallery = gallery
        self.recipes = recipes
        self.probes = probes
        self.decisions = decisions
        self.retention = retention
        self.erasure = erasure
        self.slots = slots

    # ---- IndexFaces ------------------------------------------------------------------
    def index_faces(
        self,
        *,
        collection: str,
        image: bytes,
        external_image_id: str | None,
        max_faces: int,
        filtered: bool,
        consent: Consent | None,
    ) -> IndexResult:
        """Store the ``max_faces`` largest faces of ``image``, each as a subject of its
        own. ``filtered`` (QualityFilter other than NONE): faces past a hard limit
        (pose, sharpness, light) are not indexed; a face too small to enroll never is.
        A collection that requires consent refuses before the photo is read."""
        require_consent(
            self.gallery.collections.policy(collection=collection),
            collection,
            consent,
            held=False,
        )
        timings = Timings()
        with self.slots.hold():
            faces = by_size(self.recipes.find_enrollment(image, timings, choose=every))
            found = [seen(f, self.settings.min_inter_eye) for f in faces]
            chosen, unindexed = _choose(found, max_faces, filtered)
            embeddings = (
                self.recipes.embed_enrollment([s.face for s in chosen], timings)
                if chosen
                else np.zeros((0, self.pipeline.dim), dtype=np.float32)
            )
        frame = faces[0].frame if faces else (0, 0)
        image_id = str(uuid.uuid4())
        about: dict[str, Any] = {"image_id": image_id, "external_image_id": external_image_id}
        about |= {"width": frame[0], "height": frame[1]}
        stop_if_expired(committing=True)
        ids = self._store(collection, chosen, embeddings, about, consent) if chosen else []
        return IndexResult(list(zip(ids, chosen, strict=True)), unindexed, image_id, frame, timings)

    def _store(
        self,
        collection: str,
        chosen: list[SeenFace],
        embeddings: np.ndarray,
        about: dict[str, Any],
        consent: Consent | None,
    ) -> list[str]:
        """Each face and its own subject, all in one transaction with its audit event."""
        moment = self.retention.clock()
        ids = [str(uuid.uuid4()) for _ in chosen]
        event = entry()
        version = versioned(self.pipeline.version, self.pipeline.template)
        with self.gallery.transaction(audit=event) as tx:
            policy = tx.collections.policy(collection)
            agreed = enrollment_rules(None, policy, collection, consent, moment)
            for face_id, one, embedding in zip(ids, chosen, embeddings, strict=True):
                meta = {META: {**about, "confidence": confidence(one)}}
                tx.subjects.create(collection, face_id, meta=meta)
                tx.subjects.update(collection, face_id, consent=agreed, last_used_at=moment)
                new = NewFace(embedding=embedding, box=one.face.box, detector_score=one.face.score)
                tx.faces.add(
                    collection, face_id, [new], self.pipeline.encoder_name, version, ids=[face_id]
                )
            event.about(collection=collection, subjects=ids, detail={"faces_added": ids})
        return ids

    # ---- DeleteFaces, ListFaces ------------------------------------------------------
    def delete_faces(
        self, *, collection: str, face_ids: list[str]
    ) -> tuple[list[str], dict[str, str]]:
        """Delete faces (a face indexed by IndexFaces with its subject); a face
        associated with a user is not deleted (ASSOCIATED_TO_AN_EXISTING_USER), as
        Rekognition does. Returns the deleted ids and the others' reasons."""
        event = entry()
        deleted: list[str] = []
        failed: dict[str, str] = {}
        # A write that deletes nothing bumps no version (read first, decided again inside).
        some = bool(self.gallery.users.of_faces_known(collection=collection, face_ids=face_ids))
        with self.gallery.transaction(audit=event, versioned=some) as tx:
            owners = tx.users.owners(collection, face_ids)
            for face_id in dict.fromkeys(face_ids):
                if face_id not in owners:
                    failed[face_id] = "FACE_NOT_FOUND"
                    continue
                subject_id, user = owners[face_id]
                if user is not None:
                    failed[face_id] = "ASSOCIATED_TO_AN_EXISTING_USER"
                    continue
                tx.faces.delete(collection, subject_id, face_id)
                left = tx.subjects.get(collection, subject_id)
                if subject_id == face_id and left is not None and left.face_count == 0:
                    tx.subjects.delete(collection, subject_id)
                deleted.append(face_id)
            subjects = sorted({owners[f][0] for f in deleted})
            event.about(collection=collection, subjects=subjects, detail={"faces_deleted": deleted})
        self.erasure.erased(deleted)
        return deleted, failed

    def list_faces(
        self,
        *,
        collection: str,
        after: str | None,
        limit: int,
        face_ids: list[str] | None = None,
        user_id: str | None = None,
    ) -> list[ListedFace]:
        self.gallery.collections.policy(collection=collection)  # CollectionNotFound
        return self.gallery.users.faces(
            collection=collection, after=after, limit=limit, face_ids=face_ids, user_id=user_id
        )

    # ---- CompareFaces ----------------------------------------------------------------
    def compare_faces(
        self, *, source: bytes, target: bytes, mode: ProbeMode | None = None
    ) -> CompareFacesResult:
        """The source photo's main face against every face of the target photo (the
        largest first), each scored as /compare scores a pair: the same detection,
        embedding, mirror rule and curve, so a target with one face gives /compare's
        answer."""
        timings = Timings()
        mode = mode or self.settings.probe_mode
        (probe,), first = self.probes.probes([source], timings, mode)
        targets, embeddings = self.probes.every_face(target, timings, mode)
        d = np.linalg.norm(embeddings.astype(np.float64) - first[0], axis=1)
        if self.probes.near_threshold(d, mode):
            both = self.probes.mirrored([probe, *targets], np.vstack([first, embeddings]), timings)
            d = np.linalg.norm(both[1:].astype(np.float64) - both[0], axis=1)
        recipe = self.probes.recipe(mode)
        scored = [
            (
                t,
                self.decisions.match(
                    float(dist),
                    None,
                    curve_for(recipe, recipe),
                    small=self.decisions.small(probe, t),
                ),
            )
            for t, dist in zip(targets, d, strict=True)
        ]
        return CompareFacesResult(probe, scored, timings)

    # ---- users -----------------------------------------------------------------------
    def create_user(self, *, collection: str, user_id: str, token: str | None = None) -> bool:
        """False: the collection has such a user already (made by a request with another
        ClientRequestToken than ``token``)."""
        event = entry()
        with self.gallery.transaction(audit=event, versioned=False) as tx:
            tx.collections.policy(collection)  # CollectionNotFound
            made = tx.users.create(collection, user_id, token)
            event.about(collection=collection, subjects=[], detail={"user_created": user_id})
        return made

    def delete_user(self, *, collection: str, user_id: str) -> bool:
        event = entry()
        with self.gallery.transaction(audit=event, versioned=False) as tx:
            tx.collections.policy(collection)
            gone = tx.users.delete(collection, user_id)
            event.about(collection=collection, subjects=[], detail={"user_deleted": user_id})
        return gone

    def associate(
        self, *, collection: str, user_id: str, face_ids: list[str], dissociate: bool = False
    ) -> tuple[list[str], dict[str, str]]:
        """(Dis)associate faces with an existing user (SubjectNotFound names a missing
        user): the ids done and the others' reasons."""
        event = entry()
        with self.gallery.transaction(audit=event, versioned=False) as tx:
            tx.collections.policy(collection)
            if not tx.users.exists(collection, user_id):
                raise SubjectNotFound(f"User {user_id!r} does not exist.", subject_id=user_id)
            change = tx.users.disassociate if dissociate else tx.users.associate
            done, failed = change(collection, user_id, list(dict.fromkeys(face_ids)))
            subjects = sorted({o[0] for o in tx.users.owners(collection, done).values()})
            kind = "faces_disassociated" if dissociate else "faces_associated"
            event.about(
                collection=collection, subjects=subjects, detail={kind: done, "user": user_id}
            )
        return done, failed

    def associate_checked(
        self, *, collection: str, user_id: str, face_ids: list[str], threshold: float
    ) -> tuple[list[str], dict[str, str], dict[str, float]]:
        """AssociateFaces: a user with faces already takes only faces that match one of
        them at ``threshold`` percent or more (LOW_MATCH_CONFIDENCE otherwise, with the
        best percent), so a key that may enroll cannot slip another person's face into
        a user, as Rekognition's UserMatchThreshold does."""
        if not self.user_exists(collection=collection, user_id=user_id):
            raise SubjectNotFound(f"User {user_id!r} does not exist.", subject_id=user_id)
        held = self.faces_of_user(collection=collection, user_id=user_id)
        wanted = list(dict.fromkeys(face_ids))
        scores = self._best_scores(
            collection, held, [f for f in wanted if f not in held], threshold
        )
        low = {f: "LOW_MATCH_CONFIDENCE" for f, s in scores.items() if s < threshold}
        done, failed = self.associate(
            collection=collection, user_id=user_id, face_ids=[f for f in wanted if f not in low]
        )
        return done, {**low, **failed}, {f: scores[f] for f in low}

    def _best_scores(
        self, collection: str, held: list[str], new: list[str], threshold: float
    ) -> dict[str, float]:
        """Each of ``new`` -> its best percent against the user's faces: those it has
        and those of ``new`` accepted before it (at ``threshold`` or more; the first
        face of a user with none is accepted as it is, as /enroll's first photo is)."""
        if not new:
            return {}
        known = self._embeddings(collection, held)
        offered = self._embeddings(collection, new)
        versions = self.gallery.faces.pipeline_versions(
            collection=collection, face_ids=[*known, *offered]
        )
        scores = {}
        for face_id, vector in offered.items():
            if not known:
                known[face_id] = vector
                continue
            best = 0.0
            for other, stored in known.items():
                d = float(np.linalg.norm(vector.astype(np.float64) - stored))
                curve = curve_for(recipe_of(versions[face_id]), recipe_of(versions[other]))
                best = max(best, self.decisions.match(d, None, curve).score)
            scores[face_id] = best
            if best >= threshold:
                known[face_id] = vector
        return scores

    def _embeddings(self, collection: str, face_ids: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for face_id in face_ids:
            try:
                _, found[face_id] = self.gallery.faces.embedding(
                    collection=collection, face_id=face_id, encoders=self.pipeline.compatible
                )
            except FaceNotFound:
                continue  # reported by the association itself (FACE_NOT_FOUND)
        return found

    def list_users(
        self, *, collection: str, after: str | None, limit: int
    ) -> list[tuple[str, int]]:
        self.gallery.collections.policy(collection=collection)
        return self.gallery.users.page(collection=collection, after=after, limit=limit)

    def user_exists(self, *, collection: str, user_id: str) -> bool:
        return self.gallery.users.exists(collection=collection, user_id=user_id)

    def users_of(self, *, collection: str, face_ids: list[str]) -> dict[str, str]:
        return self.gallery.users.of_faces(collection=collection, face_ids=face_ids)

    def user_count(self, *, collection: str) -> int:
        return self.gallery.users.count(collection=collection)

    def faces_of_user(self, *, collection: str, user_id: str) -> list[str]:
        rows = self.gallery.users.faces(
            collection=collection, after=None, limit=100_000, user_id=user_id
        )
        return [r.id for r in rows]


def confidence(one: SeenFace | FaceMeasures) -> float:
    """Rekognition's face Confidence (0-100): HOG's margin on the aligned chip
    (FaceMeasures.face_likeness: how face-like the face is, -1.5 to ~3) through a
    logistic, 50 at a margin of 0. A monotone map of that measure, not a calibrated
    probability (docs/REKOGNITION.md)."""
    measures = one.measures if isinstance(one, SeenFace) else one
    return round(100.0 / (1.0 + math.exp(-2.0 * measures.face_likeness)), 3)


def _choose(
    found: list[SeenFace], max_faces: int, filtered: bool
) -> tuple[list[SeenFace], list[tuple[SeenFace, list[str]]]]:
    chosen: list[SeenFace] = []
    unindexed: list[tuple[SeenFace, list[str]]] = []
    for one in found:
        blocking = [c for c in one.checks if filtered or c == "face_too_small"]
        if blocking:
            unindexed.append((one, [quality.CHECKS[c] for c in blocking]))
        elif len(chosen) >= max_faces:
            unindexed.append((one, [EXCEEDS_MAX_FACES]))
        else:
            chosen.append(one)
    return chosen, unindexed
