"""HTTP routes. Plain ``def`` where they run inference, so FastAPI runs them in its
thread pool; they translate between HTTP schemas and the service, nothing more."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from app.api import schemas as s
from app.api.deps import (
    BodyDep,
    MetricsDep,
    ServiceDep,
    SettingsDep,
    admit,
    api_key,
    require,
)
from app.api.problems import PROBLEM_JSON
from app.errors import Forbidden, KeyNotFound, NotReady
from app.face.detect import DetectedFace
from app.face.pipeline import Timings
from app.gallery.models import IDEMPOTENCY_KEY_MAX
from app.gallery.store import FaceRecord, SubjectRecord
from app.keys import KeyRecord, digest
from app.service import FaceService, Match, ProbeFace

router = APIRouter()

SubjectIdPath = Annotated[s.SubjectId, Path()]


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": s.Problem, "content": {PROBLEM_JSON: {}}, "description": "Problem"}
        for status in statuses
    }


def _request_body(model: type[BaseModel], images: dict[str, bool]) -> dict[str, Any]:
    """OpenAPI for a body sent as multipart (files) or JSON (base64), same field names.
    ``images`` maps each image field to whether it may repeat."""
    fields = model.model_json_schema()
    props: dict[str, Any] = fields.get("properties", {})
    multipart_props = {**props}
    json_props = {**props}
    for name, many in images.items():
        binary = {"type": "string", "format": "binary"}
        b64 = {"type": "string", "contentEncoding": "base64"}
        multipart_props[name] = {"type": "array", "items": binary} if many else binary
        json_props[name] = b64
        if many:
            json_props[name + "s"] = {"type": "array", "items": b64}
    required = list(fields.get("required", []))
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": multipart_props,
                        "required": required + list(images),
                    }
                },
                "application/json": {
                    "schema": {"type": "object", "properties": json_props, "required": required}
                },
            },
        }
    }


# ---- enroll / verify / identify / compare ----------------------------------------------
@router.post(
    "/enroll",
    dependencies=[require("enroll"), Depends(admit)],
    status_code=201,
    response_model=s.EnrollResponse,
    responses=_problems(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
    openapi_extra=_request_body(s.EnrollRequest, {"image": True}),
)
def enroll(
    body: BodyDep,
    service: ServiceDep,
    metrics: MetricsDep,
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
    start = time.perf_counter()
    form = body.validate(s.EnrollRequest)
    if form.force and "admin" not in request.state.scopes:
        raise Forbidden("force=true needs an admin key.", required_scope="admin")
    owner = digest(api_key(request) or "")
    result = service.enroll(
        subject_id=form.subject_id,
        images=body.image_list(),
        name=form.name,
        metadata=form.metadata,
        face_policy=form.face,
        add=form.add,
        force=form.force,
        idempotency=(owner, idempotency_key) if idempotency_key else None,
    )
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    metrics.observe_timings(result.timings)
    return s.EnrollResponse(
        subject=_subject(result.subject),
        faces=[_face(f) for f in result.faces],
        face_count=result.subject.face_count,
        model=_model(service),
        timing=_timing(result.timings, start),
    )


@router.post(
    "/verify",
    dependencies=[require("verify"), Depends(admit)],
    response_model=s.VerifyResponse,
    responses=_problems(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
    openapi_extra=_request_body(s.VerifyRequest, {"image": False}),
)
def verify(
    body: BodyDep, service: ServiceDep, settings: SettingsDep, metrics: MetricsDep
) -> s.VerifyResponse:
    """Is the person in the photo this subject? Compares with the subject's closest face."""
    start = time.perf_counter()
    form = body.validate(s.VerifyRequest)
    result = service.verify(subject_id=form.subject_id, image=body.image(), prior=form.prior)
    metrics.observe_timings(result.timings)
    metrics.scores.labels("verify").observe(result.result.score)
    return s.VerifyResponse(
        **_match(result.result, settings.threshold),
        subject_id=result.subject_id,
        face_id=result.face_id,
        probe=_probe(result.probe),
        model=_model(service),
        calibration=_calibration(service),
        timing=_timing(result.timings, start),
    )


@router.post(
    "/identify",
    dependencies=[require("verify"), Depends(admit)],
    response_model=s.IdentifyResponse,
    responses=_problems(400, 401, 403, 413, 415, 422, 429, 503),
    openapi_extra=_request_body(s.IdentifyRequest, {"image": False}),
)
def identify(
    body: BodyDep, service: ServiceDep, settings: SettingsDep, metrics: MetricsDep
) -> s.IdentifyResponse:
    """Who is this? The nearest enrolled subjects to the photo's main face."""
    start = time.perf_counter()
    form = body.validate(s.IdentifyRequest)
    result = service.identify(image=body.image(), top_k=form.top_k, prior=form.prior)
    metrics.observe_timings(result.timings)
    if result.candidates:
        metrics.scores.labels("identify").observe(result.candidates[0].result.score)
    candidates = [
        s.CandidateOut(
            subject_id=c.subject_id,
            face_id=c.face_id,
            distance=c.result.distance,
            score=c.result.score,
            match=c.result.match,
        )
        for c in result.candidates
    ]
    return s.IdentifyResponse(
        best=candidates[0] if result.best is not None else None,
        candidates=candidates,
        threshold=settings.threshold,
        gallery_size=result.gallery_size,
        probe=_probe(result.probe),
        model=_model(service),
        calibration=_calibration(service),
        timing=_timing(result.timings, start),
    )


@router.post(
    "/compare",
    dependencies=[require("verify"), Depends(admit)],
    response_model=s.CompareResponse,
    responses=_problems(400, 401, 403, 413, 415, 422, 429, 503),
    openapi_extra=_request_body(s.CompareRequest, {"image_a": False, "image_b": False}),
)
def compare(
    body: BodyDep, service: ServiceDep, settings: SettingsDep, metrics: MetricsDep
) -> s.CompareResponse:
    """Are two photos the same person? Nothing is stored."""
    start = time.perf_counter()
    form = body.validate(s.CompareRequest)
    result = service.compare(
        image_a=body.image("image_a"), image_b=body.image("image_b"), prior=form.prior
    )
    metrics.observe_timings(result.timings)
    metrics.scores.labels("compare").observe(result.result.score)
    return s.CompareResponse(
        **_match(result.result, settings.threshold),
        probe_a=_probe(result.probe_a),
        probe_b=_probe(result.probe_b),
        model=_model(service),
        calibration=_calibration(service),
        timing=_timing(result.timings, start),
    )


# ---- subjects ---------------------------------------------------------------------------
@router.get(
    "/subjects",
    response_model=s.SubjectPage,
    responses=_problems(401, 403, 422),
    dependencies=[require("admin")],
)
def list_subjects(
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    prefix: Annotated[str | None, Query(max_length=128, description="Id prefix filter.")] = None,
) -> s.SubjectPage:
    """List subjects by id, a page at a time."""
    items, total = service.list_subjects(offset=offset, limit=limit, prefix=prefix)
    return s.SubjectPage(
        items=[_subject(x) for x in items], total=total, offset=offset, limit=limit
    )


@router.get(
    "/subjects/{subject_id}",
    response_model=s.SubjectDetailOut,
    responses=_problems(401, 403, 404, 422),
    dependencies=[require("admin")],
)
def get_subject(subject_id: SubjectIdPath, service: ServiceDep) -> s.SubjectDetailOut:
    """One subject with its enrolled faces (boxes and versions; never embeddings)."""
    subject, faces = service.get_subject(subject_id=subject_id)
    return s.SubjectDetailOut(**_subject(subject).model_dump(), faces=[_face(f) for f in faces])


@router.delete(
    "/subjects/{subject_id}",
    response_model=s.DeleteSubjectResponse,
    responses=_problems(401, 403, 404, 422),
    dependencies=[require("enroll")],
)
def delete_subject(subject_id: SubjectIdPath, service: ServiceDep) -> s.DeleteSubjectResponse:
    """Delete a subject and every embedding of it, from the database and the index."""
    deleted = service.delete_subject(subject_id=subject_id)
    return s.DeleteSubjectResponse(subject_id=subject_id, deleted=True, faces_deleted=deleted)


@router.delete(
    "/subjects/{subject_id}/faces/{face_id}",
    response_model=s.DeleteFaceResponse,
    responses=_problems(401, 403, 404, 422),
    dependencies=[require("enroll")],
)
def delete_face(
    subject_id: SubjectIdPath,
    face_id: Annotated[str, Path(min_length=1, max_length=64)],
    service: ServiceDep,
) -> s.DeleteFaceResponse:
    """Delete one enrolled face of a subject."""
    service.delete_face(subject_id=subject_id, face_id=face_id)
    remaining = service.get_subject(subject_id=subject_id)[0].face_count
    return s.DeleteFaceResponse(
        subject_id=subject_id, face_id=face_id, deleted=True, face_count=remaining
    )


# ---- API keys ---------------------------------------------------------------------------
@router.get(
    "/keys",
    response_model=list[s.KeyOut],
    responses=_problems(401, 403),
    dependencies=[require("admin")],
)
def list_keys(request: Request) -> list[s.KeyOut]:
    """API keys in the database (names, prefixes, scopes; never the keys)."""
    return [_key(k) for k in request.app.state.keys.list()]


@router.post(
    "/keys",
    status_code=201,
    response_model=s.KeyCreated,
    responses=_problems(401, 403, 413, 422),
    dependencies=[require("admin")],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": s.KeyCreateRequest.model_json_schema()}},
        }
    },
)
def create_key(raw: BodyDep, request: Request) -> s.KeyCreated:
    """Create an API key. The key is in this response only: it is stored as a hash."""
    # Read through BodyDep, not a body parameter: the key is checked before the body.
    body = raw.validate(s.KeyCreateRequest)
    key, record = request.app.state.keys.create(name=body.name, scopes=tuple(body.scopes))
    return s.KeyCreated(**_key(record).model_dump(), key=key)


@router.delete(
    "/keys/{key_id}",
    response_model=s.KeyOut,
    responses=_problems(401, 403, 404, 422),
    dependencies=[require("admin")],
)
def revoke_key(key_id: Annotated[str, Path(max_length=64)], request: Request) -> s.KeyOut:
    """Revoke an API key; it stops working at once, on every replica."""
    keys = request.app.state.keys
    if not keys.revoke(key_id=key_id):
        raise KeyNotFound(f"No active API key with id {key_id!r}.", key_id=key_id)
    return next(_key(k) for k in keys.list() if k.id == key_id)


# ---- operations -------------------------------------------------------------------------
@router.get("/metrics", responses=_problems(401, 403), dependencies=[require("admin")])
def metrics_endpoint(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests, latency, stage times, gallery size, match scores."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=s.HealthResponse)
def healthz() -> s.HealthResponse:
    """The process is up."""
    return s.HealthResponse(status="ok")


@router.get("/readyz", response_model=s.ReadyResponse, responses=_problems(503))
def readyz(request: Request) -> s.ReadyResponse:
    """Models are loaded and the database answers."""
    service: FaceService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("The models are not loaded yet.")
    try:
        service.store.ping()
    except SQLAlchemyError as exc:
        raise NotReady(f"The database does not answer: {type(exc).__name__}") from exc
    # A status only: the endpoint needs no key, so it tells nothing about the gallery.
    return s.ReadyResponse(status="ready")


@router.get("/info", responses=_problems(401), dependencies=[require(None)])
def info(request: Request, service: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    """Models, their hashes and licences, the threshold, calibration and gallery size."""
    weights = request.app.state.weights
    return {
        "service": "faceverify",
        "version": request.app.version,
        "models": [
            {"name": w.name, "file": w.path.name, "sha256": w.sha256, "licence": w.licence}
            for w in weights.values()
        ],
        "encoder": service.pipeline.encoder_name,
        "pipeline_version": service.pipeline.version,
        "threshold": settings.threshold,
        "calibration": {
            **service.calibration.info(),
            "calibration_matches_pipeline": service.calibration_matches_pipeline(),
        },
        "calibration_matches_pipeline": service.calibration_matches_pipeline(),
        "gallery": service.gallery_counts(),
        "settings": {
            "detect_max_side": settings.detect_max_side,
            "detect_upsample": settings.detect_upsample,
            "detect_retry_max_side": settings.detect_retry_max_side,
            "num_jitters": settings.num_jitters,
            "min_face_side": settings.min_face_side,
            "max_image_pixels": settings.max_image_pixels,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_concurrent_inference": settings.max_concurrent_inference,
            "database": settings.resolved_database_url().split(":", 1)[0],
        },
    }


# ---- conversions ------------------------------------------------------------------------
def _box(box: Any) -> s.BoxOut:
    if isinstance(box, tuple):
        return s.BoxOut(left=box[0], top=box[1], right=box[2], bottom=box[3])
    return s.BoxOut(left=box.left, top=box.top, right=box.right, bottom=box.bottom)


def _key(record: KeyRecord) -> s.KeyOut:
    return s.KeyOut(
        key_id=record.id,
        name=record.name,
        prefix=record.prefix,
        scopes=list(record.scopes),
        created_at=s.as_utc(record.created_at),
        revoked_at=s.as_utc(record.revoked_at) if record.revoked_at else None,
    )


def _face(face: FaceRecord) -> s.FaceOut:
    return s.FaceOut(
        face_id=face.id,
        box=_box(face.box),
        detector_score=round(face.detector_score, 4),
        encoder=face.encoder,
        pipeline_version=face.pipeline_version,
        created_at=s.as_utc(face.created_at),
    )


def _subject(subject: SubjectRecord) -> s.SubjectOut:
    return s.SubjectOut(
        subject_id=subject.id,
        name=subject.name,
        metadata=subject.metadata,
        created_at=s.as_utc(subject.created_at),
        face_count=subject.face_count,
    )


def _probe(probe: ProbeFace) -> s.ProbeOut:
    face: DetectedFace = probe.face
    return s.ProbeOut(
        box=_box(face.box),
        detector_score=round(face.score, 4),
        landmarks=[(round(x, 1), round(y, 1)) for x, y in face.landmarks],
        faces_detected=probe.faces_detected,
        multiple_faces=probe.faces_detected > 1,
        detector=face.detector,
    )


def _match(result: Match, threshold: float) -> dict[str, Any]:
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
        "threshold": threshold,
        "fmr": fmr,
    }


def _model(service: FaceService) -> s.ModelOut:
    return s.ModelOut(encoder=service.pipeline.encoder_name, pipeline=service.pipeline.version)


def _calibration(service: FaceService) -> s.CalibrationRef:
    cal = service.calibration
    return s.CalibrationRef(version=cal.version, provisional=cal.provisional)


def _timing(timings: Timings, start: float) -> s.TimingOut:
    return s.TimingOut(
        **timings.as_dict(), total_ms=round((time.perf_counter() - start) * 1000.0, 2)
    )
