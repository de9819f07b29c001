"""Enrollment rules: what a photo must be to be stored, and what makes two enrollments
the same request."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np

from app.errors import (
    FaceMismatch,
    FaceNotEnrollable,
    FaceQualityTooLow,
    FaceTooSmall,
    IdempotencyKeyReused,
    InvalidRequest,
    MultipleFaces,
    TooManyImages,
)
from app.face import quality
from app.face.detect import DetectedFace, largest
from app.face.timing import Timings
from app.face.views import curve_for
from app.gallery import Consent, Gallery, IdempotencyClaim
from app.scoring.distance import distances
from app.service.results import EnrollResult, FacePolicy
from app.settings import Settings

# Two embeddings this close are the same face of the same photo (the pipeline is
# deterministic: re-running it gives the same embedding to ~1e-7).
KNOWN_FACE_DISTANCE = 1e-4


class EnrollmentRules:
    """The checks an enrollment passes before anything is stored: how many photos, one
    face each (or the largest), big enough, good enough, the same person as the
    subject; and its Idempotency-Key's stored answer."""

    def __init__(
        self, settings: Settings, gallery: Gallery, threshold: Callable[[str], float]
    ) -> None:
        self.settings = settings
        self.gallery = gallery
        # the decision threshold on a curve (Decisions.threshold)
        self.threshold = threshold

    def check_count(self, images: list[bytes]) -> None:
        if not images:
            raise InvalidRequest("Send at least one image to enroll.")
        cap = self.settings.max_enroll_images
        if len(images) > cap:
            raise TooManyImages(
                f"{len(images)} photos in one enrollment; the cap is {cap}.", max_images=cap
            )

    def chosen_face(
        self, faces: list[DetectedFace], number: int, policy: FacePolicy
    ) -> DetectedFace:
        """Image ``number``'s face to store: its only one, or (``policy`` largest) its
        largest; refused when there are several or it is too small."""
        if len(faces) > 1 and policy == "single":
            raise MultipleFaces(
                f"Image {number} has {len(faces)} faces; enrollment needs exactly one. "
                "Crop the photo, or send face=largest to use the largest face.",
                image_index=number,
                boxes=[f.box for f in faces],
            )
        face = largest(faces)
        side = self.settings.min_face_side
        if face.side < side:
            raise FaceTooSmall(
                f"The face in image {number} is {face.side} px wide; enrollment needs "
                f"at least {side} px.",
                image_index=number,
                box=face.box,
                min_face_side=side,
            )
        return face

    def check_quality(self, face: DetectedFace, number: int, timings: Timings) -> None:
        """Refuse an enrollment face too small between the eyes, under the quality
        floor, or past a hard limit, saying why (a poor enrollment photo is where most
        false rejections start)."""
        with timings.measure("quality_ms"):
            measures = quality.measure(face)
        failed = quality.checks(measures, self.settings.min_inter_eye)
        if "face_too_small" in failed:
            least = self.settings.min_inter_eye
            raise FaceTooSmall(
                f"The face in image {number} has {measures.inter_eye:g} px between the eyes; "
                f"enrollment needs at least {least:g} px. Move closer or use a larger photo.",
                image_index=number,
                box=face.box,
                min_face_side=self.settings.min_face_side,
                inter_eye_px=measures.inter_eye,
                min_inter_eye_px=least,
            )
        floor = self.settings.enroll_min_quality
        if not floor:
            return
        assessed = quality.assess(measures)
        if assessed.quality < floor:
            # Many small penalties can add up with none large enough to be a reason.
            reasons = list(assessed.reasons) or ["low_quality"]
            advice = assessed.advice or ["Use a sharp, well-lit, frontal photo."]
            raise FaceQualityTooLow(
                f"The face in image {number} has quality {assessed.quality:g} of 100; "
                f"enrollment needs at least {floor:g}. " + " ".join(advice),
                image_index=number,
                quality=assessed.quality,
                min_quality=floor,
                reasons=reasons,
                advice=advice,
            )
        if failed:
            advice = [quality.CHECK_ADVICE[code] for code in failed]
            raise FaceNotEnrollable(
                f"The face in image {number} cannot be enrolled: {', '.join(failed)}. "
                + " ".join(advice),
                image_index=number,
                reasons=list(failed),
                advice=advice,
            )

    def check_same_person(
        self,
        subject_id: str,
        known: np.ndarray,
        recipes: list[str],
        embeddings: np.ndarray,
        mine: str,
    ) -> None:
        """Each new face (made with recipe ``mine``) must be within the threshold of one
        of the subject's enrolled faces (``known``, made with ``recipes``) or of an
        earlier photo in this request, each pair judged by the threshold of its curve."""
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

    def replay(self, claim: IdempotencyClaim) -> EnrollResult | None:
        """The stored answer to an earlier request with this Idempotency-Key, if any;
        IdempotencyKeyReused if that request was a different one."""
        record = self.gallery.idempotency.find(owner=claim.owner, key=claim.key)
        if record is None:
            return None
        if record.request_sha256 != claim.request_sha256:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for a different request; use a new key for "
                "a new enrollment.",
            )
        where = {"collection": record.collection, "subject_id": record.subject_id}
        subject = self.gallery.subjects.get(**where)
        wanted = set(record.face_ids)
        faces = [f for f in self.gallery.faces.of_subject(**where) if f.id in wanted]
        return EnrollResult(subject=subject, faces=faces, timings=Timings(), replayed=True)


def all_known(known: np.ndarray, embeddings: np.ndarray) -> bool:
    """Every new face is one the subject already has (the same embedding)."""
    if not len(known):
        return False
    # Differences, not the expanded |a|^2 + |b|^2 - 2ab of distances(): that loses ~5e-4
    # to float32 cancellation right where this looks.
    exact = known.astype(np.float64)
    return all(
        float(np.linalg.norm(exact - e, axis=1).min()) < KNOWN_FACE_DISTANCE for e in embeddings
    )


def request_digest(
    collection: str,
    subject_id: str,
    images: list[bytes],
    name: str | None,
    metadata: dict[str, Any] | None,
    face_policy: str,
    add: bool,
    expires_at: datetime | None = None,
    consent: Consent | None = None,
) -> str:
    """What makes two enrollments "the same request" for an Idempotency-Key: every
    field that changes what is stored, the expiry and consent included (issue 37: a
    replay ignored a changed one)."""
    digest = hashlib.sha256()
    fields = [
        collection,
        subject_id,
        name,
        metadata,
        face_policy,
        add,
        expires_at.isoformat() if expires_at is not None else None,
        consent.as_json() if consent is not None else None,
    ]
    digest.update(json.dumps(fields, sort_keys=True).encode())
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()
