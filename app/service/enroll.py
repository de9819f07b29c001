"""Enrollment: every photo checked before anything is stored, then the subject and its
faces written in one transaction with the rules that must hold where it commits
(app/privacy/rules.py), its audit event and its Idempotency-Key record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from app.errors import SubjectNotFound
from app.face.detect import DetectedFace
from app.face.pipeline import FacePipeline
from app.face.recipes import Recipes
from app.face.timing import Timings
from app.face.views import versioned
from app.gallery import (
    Consent,
    FaceRecord,
    Gallery,
    IdempotencyClaim,
    IdempotencyKeyTaken,
    NewFace,
    SubjectRecord,
)
from app.privacy.events import entry
from app.privacy.retention import Retention
from app.privacy.rules import enrollment_rules
from app.service.enrollment import EnrollmentRules, all_known, request_digest
from app.service.gates import stop_if_expired
from app.service.probes import ProbeSteps
from app.service.results import EnrollResult, FacePolicy
from app.service.subject_cache import SubjectReads
from app.slots import FairSlots


class Enrollment:
    """The enroll use case."""

    def __init__(
        self,
        *,
        pipeline: FacePipeline,
        gallery: Gallery,
        recipes: Recipes,
        rules: EnrollmentRules,
        probes: ProbeSteps,
        retention: Retention,
        subjects: SubjectReads,
        slots: FairSlots,
    ) -> None:
        self.pipeline = pipeline
        self.gallery = gallery
        self.recipes = recipes
        self.rules = rules
        self.probes = probes
        self.retention = retention
        self.subjects = subjects
        self.slots = slots

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
        chosen, embeddings = self._faces(images, face_policy, timings)
        # The subject's faces, read once for both checks below.
        known = np.zeros((0, embeddings.shape[1]), dtype=np.float32)
        recipes: list[str] = []
        if add and (skip_known or not force):
            known, recipes = self.subjects.known(collection, subject_id)
        if skip_known and add and self._has_already(known, recipes, embeddings):
            subject = self.gallery.subjects.get(collection=collection, subject_id=subject_id)
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

    def _faces(
        self, images: list[bytes], policy: FacePolicy, timings: Timings
    ) -> tuple[list[DetectedFace], np.ndarray]:
        """Each image's face to store, checked, and their embeddings (the enrollment
        recipe); the first refusal stops it."""
        chosen: list[DetectedFace] = []
        with self.slots.hold():
            for number, data in enumerate(images):
                stop_if_expired()  # stop early: nobody waits for this answer any more
                faces = self.probes.found(self.recipes.find_enrollment(data, timings), number)
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
        """Write the faces with the idempotency record; a concurrent request with the
        same key that stored first is answered with its result. ``about``: the
        subject's name, metadata, expires_at and consent."""
        try:
            new = NewEnrollment(
                collection,
                subject_id,
                faces,
                self.pipeline.encoder_name,
                versioned(self.pipeline.version, self.pipeline.template),
                add,
                **about,
            )
            stored, subject, _ = write_enrollment(
                self.gallery, new, claim=claim, now=self.retention.clock()
            )
        except IdempotencyKeyTaken:
            # A concurrent request with the same key stored first; ours rolled back.
            assert claim is not None
            if (replay := self.rules.replay(claim)) is None:
                raise
            return replay
        return EnrollResult(subject=subject, faces=stored, timings=timings)


@dataclass(frozen=True)
class NewEnrollment:
    """What an enrollment stores: the subject (new with ``add=False``, else existing;
    ``name``, ``metadata``, ``expires_at`` and ``consent`` replace its own when given)
    and its faces, made by ``encoder`` at ``pipeline_version``."""

    collection: str
    subject_id: str
    faces: list[NewFace]
    encoder: str
    pipeline_version: str
    add: bool = False
    name: str | None = None
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None
    consent: Consent | None = None


def write_enrollment(
    gallery: Gallery,
    new: NewEnrollment,
    *,
    claim: IdempotencyClaim | None = None,
    now: datetime | None = None,
) -> tuple[list[FaceRecord], SubjectRecord, int]:
    """The subject and its faces, all or nothing: checked inside the transaction, so two
    requests racing to create one subject cannot both succeed, and a subject that became
    due while the photos were read is refused. Its retention clock restarts ``now``.
    Returns the stored faces, the subject afterwards and the gallery version written.

    Raises CollectionNotFound, SubjectExists (new) or SubjectNotFound (add),
    IdempotencyKeyTaken (``claim`` recorded by another request first), SubjectExpired,
    ConsentRequired, InvalidRequest (a bad consent or subject id), ValueError (an
    embedding that is not a vector of finite floats)."""
    moment = now or datetime.now(UTC)
    event = entry()
    collection, subject_id = new.collection, new.subject_id
    with gallery.transaction(audit=event) as tx:
        if claim is not None:
            tx.idempotency.claim(claim)
        policy = tx.collections.policy(collection)
        subject = tx.subjects.get(collection, subject_id) if new.add else None
        if new.add and subject is None:
            raise SubjectNotFound.for_id(subject_id)
        if not new.add:
            tx.subjects.create(collection, subject_id, name=new.name, meta=new.metadata)
        agreed = enrollment_rules(subject, policy, collection, new.consent, moment)
        tx.subjects.update(
            collection,
            subject_id,
            name=new.name,
            meta=new.metadata,
            consent=agreed,
            expires_at=new.expires_at,
            last_used_at=moment,
        )
        stored = tx.faces.add(collection, subject_id, new.faces, new.encoder, new.pipeline_version)
        face_ids = [f.id for f in stored]
        event.about(collection=collection, subjects=[subject_id], detail={"faces_added": face_ids})
        tx.idempotency.record(collection, subject_id, face_ids)
        after = tx.subjects.get(collection, subject_id)
    assert after is not None
    return stored, after, tx.version
