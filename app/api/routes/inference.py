"""/enroll, /verify, /identify, /compare, /detect: the routes that run the face pipeline.

Plain ``def``, so FastAPI runs them in its thread pool (dlib and ONNX Runtime block).
Each takes an :class:`Inference`, which starts the clock and builds the fields every
inference answer shares (model, calibration, timing), and records the stage timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel

from app.api import schemas as s
from app.api.audit import audited
from app.api.deps import (
    BodyDep,
    CollectionQuery,
    MetricsDep,
    ServiceDep,
    SettingsDep,
    admit,
    refuse_before_body,
    require,
    target_collection,
)
from app.api.lanes import in_lane
from app.api.routes.common import face_out, problems, request_body, subject_out
from app.errors import Forbidden, InvalidRequest
from app.face.detect import DetectedFace
from app.face.quality import Assessment, FaceMeasures
from app.face.timing import Timings
from app.gallery.models import IDEMPOTENCY_KEY_MAX
from app.gallery.records import Consent
from app.keys import digest
from app.privacy.events import note
from app.service import Match, ProbeFace

router = APIRouter(tags=["faces"])


class Inference:
    """One inference request's shared parts (a FastAPI dependency)."""

    def __init__(
        self,
        request: Request,
        service: ServiceDep,
        metrics: MetricsDep,
        settings: SettingsDep,
        collection: CollectionQuery = None,
    ) -> None:
        self.start = time.perf_counter()
        self.request = request
        self.service = service
        self.metrics = metrics
        self.min_quality = settings.enroll_min_quality
        self.queried_collection = collection

    def collection(self, form_collection: str | None) -> str:
        """The collection to act on, from the key, the query and the body."""
        return target_collection(self.request, self.queried_collection, form_collection)

    def model(self) -> s.ModelOut:
        names = self.service.names()
        return s.ModelOut(encoder=names.encoder, pipeline=names.pipeline_version)

    def calibration(self, curve: str, small: bool = False) -> s.CalibrationRef:
        cal = self.service.curve(curve)
        return s.CalibrationRef(
            version=cal.version, provisional=cal.provisional, curve=cal.name, small_probe=small
        )

    def timing(self, timings: Timings) -> s.TimingOut:
        """The stage times (also recorded in the metrics) and the total so far."""
        self.metrics.observe_timings(timings)
        total = round((time.perf_counter() - self.start) * 1000.0, 2)
        return s.TimingOut(**timings.as_dict(), total_ms=total)

    def answer(self, timings: Timings, curve: str, small: bool = False) -> dict[str, Any]:
        """The fields every comparison answer ends with: model, calibration (the curve
        that scored it; ``small``: as a probe face too small to enroll), timing."""
        return {
            "model": self.model(),
            "calibration": self.calibration(curve, small),
            "timing": self.timing(timings),
        }

    def probe(self, probe: ProbeFace) -> s.ProbeOut:
        return probe_out(probe, self.min_quality)

    def match(self, result: Match, route: str) -> dict[str, Any]:
        """A decision's fields (MatchFields), its score recorded under ``route``."""
        self.metrics.scores.labels(route).observe(result.score)
        fmr = None
        if result.fmr is not None:
            rate, count, total = result.fmr
            fmr = s.FmrOut(
                rate=rate,
                impostor_pairs_at_or_below=count,
                impostor_pairs=total,
                one_in=round(total / count) if count else None,
            )
        return {
            "match": result.match,
            "score": result.score,
            "distance": result.distance,
            "threshold": result.threshold,
            "fmr": fmr,
            "max_fmr": result.max_fmr,
        }


async def inference(
    request: Request,
    service: ServiceDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    collection: CollectionQuery = None,
) -> Inference:
    # On the event loop: a class dependency's __init__ would cost a thread hop.
    return Inference(request, service, metrics, settings, collection)


InferenceDep = Annotated[Inference, Depends(inference)]
STATUSES = (400, 401, 403, 413, 415, 422, 429, 503)


def inference_route(
    path: str,
    scope: str,
    response_model: type[BaseModel],
    form: type[BaseModel],
    images: dict[str, bool],
    *,
    status_code: int = 200,
    statuses: tuple[int, ...] = STATUSES,
    images_required: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """POST ``path``: the key's ``scope`` checked first, then the body read, then
    admission; OpenAPI for the form's fields and its image fields (``images``: name ->
    may repeat) sent as multipart or JSON."""
    post = router.post(
        path,
        dependencies=[require(scope), Depends(refuse_before_body), Depends(admit)],
        status_code=status_code,
        response_model=response_model,
        responses=problems(*statuses),
        openapi_extra=request_body(form, images, images_required=images_required),
    )
    return lambda route: post(in_lane(route))


def quality_out(assessed: Assessment, floor: float) -> s.QualityOut:
    return s.QualityOut(
        score=assessed.quality,
        low=assessed.quality < floor,
        reasons=list(assessed.reasons),
        advice=assessed.advice,
    )


def _landmarks(face: DetectedFace) -> list[tuple[float, float]]:
    return [(round(x, 1), round(y, 1)) for x, y in face.landmarks]


def probe_out(probe: ProbeFace, floor: float) -> s.ProbeOut:
    face = probe.face
    return s.ProbeOut(
        box=face.box,
        detector_score=round(face.score, 4),
        landmarks=_landmarks(face),
        faces_detected=probe.faces_detected,
        multiple_faces=probe.faces_detected > 1,
        detector=face.detector,
        quality=quality_out(probe.quality, floor),
        pose=pose_out(probe.measures),
        inter_eye_px=probe.measures.inter_eye,
        checks=list(probe.checks),
    )


def pose_out(measures: FaceMeasures) -> s.PoseOut:
    return s.PoseOut(roll=measures.roll, yaw=measures.yaw, pitch=measures.pitch)


@inference_route(
    "/enroll",
    "enroll",
    s.EnrollResponse,
    s.EnrollRequest,
    {"image": True},
    status_code=201,
    statuses=(*STATUSES, 404, 409),
)
@audited("enroll", 201)
def enroll(
    body: BodyDep,
    call: InferenceDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=IDEMPOTENCY_KEY_MAX,
            pattern=r"^[\x21-\x7e]+$",
            description="Makes retries safe: the first request with this key stores; a "
            "retry within 24 h gets the same answer (header Idempotent-Replayed: true).",
        ),
    ] = None,
) -> s.EnrollResponse:
    """Enroll a new subject, or add faces to one (add=true): one face per photo, all or none."""
    form = body.validate(s.EnrollRequest)
    note(subjects=[form.subject_id])
    if form.force and "admin" not in request.state.principal.scopes:
        raise Forbidden("force=true needs an admin key.", required_scope="admin")
    collection = call.collection(form.collection)
    # An Idempotency-Key is the collection's, not one API key's: a retry sent with
    # another key of the collection gets the first answer, not a second copy (issue 37).
    owner = digest(f"collection:{collection}")
    result = call.service.enroll(
        collection=collection,
        subject_id=form.subject_id,
        images=body.image_list(),
        name=form.name,
        metadata=form.metadata,
        face_policy=form.face,
        add=form.add,
        force=form.force,
        idempotency=(owner, idempotency_key) if idempotency_key else None,
        expires_at=form.expires_at,
        consent=Consent(form.consent.reference, form.consent.given_at) if form.consent else None,
    )
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return s.EnrollResponse(
        subject=subject_out(result.subject),
        faces=[face_out(f) for f in result.faces],
        face_count=result.subject.face_count,
        model=call.model(),
        timing=call.timing(result.timings),
    )


@inference_route(
    "/verify",
    "verify",
    s.VerifyResponse,
    s.VerifyRequest,
    {"image": False},
    statuses=(*STATUSES, 404, 409),
)
@audited("verify")
def verify(body: BodyDep, call: InferenceDep) -> s.VerifyResponse:
    """Is the person in the photo this subject? Compares with the subject's closest face."""
    form = body.validate(s.VerifyRequest)
    note(subjects=[form.subject_id])
    result = call.service.verify(
        collection=call.collection(form.collection),
        subject_id=form.subject_id,
        image=body.image(),
        prior=form.prior,
        mode=form.mode,
        max_fmr=form.max_fmr,
    )
    note(subjects=[result.subject_id], match=result.result.match, score=result.result.score)
    return s.VerifyResponse(
        **call.match(result.result, "verify"),
        subject_id=result.subject_id,
        face_id=result.face_id,
        mode=result.mode,
        probe=call.probe(result.probe),
        **call.answer(result.timings, result.result.curve, result.result.small_probe),
    )


@inference_route(
    "/identify",
    "verify",
    s.IdentifyResponse,
    s.IdentifyRequest,
    {"image": False},
    statuses=(*STATUSES, 404),
    images_required=False,  # or face_id
)
@audited("identify")
def identify(body: BodyDep, call: InferenceDep) -> s.IdentifyResponse:
    """Who is this? The nearest enrolled subjects to the photo's main face, or to a
    stored face (face_id)."""
    form = body.validate(s.IdentifyRequest)
    collection = call.collection(form.collection)
    if form.face_id is not None:
        if body.images:
            raise InvalidRequest("Send either face_id or an image, not both.")
        if form.mode is not None:
            raise InvalidRequest("mode applies to a photo; a face_id search uses the stored face.")
        result = call.service.identify_face(
            collection=collection,
            face_id=form.face_id,
            top_k=form.top_k,
            prior=form.prior,
            fpir=form.fpir,
        )
    else:
        result = call.service.identify(
            collection=collection,
            image=body.image(),
            top_k=form.top_k,
            prior=form.prior,
            mode=form.mode,
            fpir=form.fpir,
        )
    if result.candidates:
        call.metrics.scores.labels("identify").observe(result.candidates[0].result.score)
    returned = [c.subject_id for c in result.candidates]
    note(
        # A search by a stored face uses its owner's data too (issue 37).
        subjects=[result.probe_subject, *returned] if result.probe_subject else returned,
        match=result.best is not None,
        score=result.candidates[0].result.score if result.candidates else None,
    )
    candidates = [
        s.CandidateOut(
            subject_id=c.subject_id,
            face_id=c.face_id,
            distance=c.result.distance,
            score=c.result.score,
            match=c.result.match,
            curve=c.result.curve,
            threshold=c.result.threshold,
        )
        for c in result.candidates
    ]
    decision = result.open_set
    return s.IdentifyResponse(
        best=candidates[0] if result.best is not None else None,
        candidates=candidates,
        open_set=None if decision is None else s.OpenSetOut.model_validate(asdict(decision)),
        threshold=call.service.threshold(result.curve),
        gallery_size=result.gallery_size,
        mode=result.mode,
        probe=call.probe(result.probe) if result.probe is not None else None,
        **call.answer(result.timings, result.curve, result.small_probe),
    )


@inference_route(
    "/compare", "verify", s.CompareResponse, s.CompareRequest, {"image_a": False, "image_b": False}
)
@audited("compare")
def compare(body: BodyDep, call: InferenceDep) -> s.CompareResponse:
    """Are two photos the same person? Nothing is stored."""
    form = body.validate(s.CompareRequest)
    call.collection(form.collection)  # a key may name only a collection it may use
    result = call.service.compare(
        image_a=body.image("image_a"),
        image_b=body.image("image_b"),
        prior=form.prior,
        mode=form.mode,
    )
    note(match=result.result.match, score=result.result.score)
    return s.CompareResponse(
        **call.match(result.result, "compare"),
        mode=result.mode,
        probe_a=call.probe(result.probe_a),
        probe_b=call.probe(result.probe_b),
        **call.answer(result.timings, result.result.curve, result.result.small_probe),
    )


@inference_route("/detect", "verify", s.DetectResponse, s.DetectRequest, {"image": False})
@audited("detect")
def detect(body: BodyDep, call: InferenceDep) -> s.DetectResponse:
    """Every face in the photo with its landmarks, pose, size and quality; nothing is stored."""
    body.validate(s.DetectRequest)
    result = call.service.detect(image=body.image())
    note(detail={"faces": len(result.faces)})
    return s.DetectResponse(
        faces=[
            s.DetectedFaceOut(
                box=face.box,
                landmarks=_landmarks(face),
                detector_score=round(face.score, 4),
                detector=face.detector,
                pose=pose_out(m),
                inter_eye_px=m.inter_eye,
                box_px=m.box_side,
                sharpness=m.sharpness,
                brightness=m.brightness,
                contrast=m.contrast,
                face_likeness=m.face_likeness,
                quality=quality_out(assessed, call.min_quality),
                checks=list(checks),
            )
            for face, m, assessed, checks in result.faces
        ],
        model=call.model(),
        timing=call.timing(result.timings),
    )
