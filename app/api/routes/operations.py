"""/healthz, /readyz, /info, /metrics: for operators and orchestrators."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api import admin_schemas as a
from app.api.audit import not_audited
from app.api.deps import MetricsDep, PrincipalDep, ServiceDep, SettingsDep, require
from app.api.routes.common import collection_out, problems
from app.errors import NotReady
from app.face.views import CURVE_USES
from app.sbom import LICENSES_NAME, SBOM_NAME, shipped_file
from app.service import FaceService, ServiceInfo
from app.settings import Settings

router = APIRouter(tags=["operations"])

# /info lists at most this many collections' sizes (the largest).
INFO_COLLECTIONS = 100
# The InfoSettings fields read straight off the settings (the rest are derived).
INFO_SETTINGS = [f for f in a.InfoSettings.model_fields if f not in ("database", "vector_search")]


@router.get("/metrics", responses=problems(401, 403), dependencies=[require("admin", unbound=True)])
@not_audited("counters, no biometric data")
def metrics_endpoint(metrics: MetricsDep) -> Response:
    """Prometheus metrics: requests, latency, stage times, gallery size, match scores."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=a.HealthResponse)
@not_audited("liveness")
def healthz() -> a.HealthResponse:
    """The process is up."""
    return a.HealthResponse(status="ok")


@router.get("/readyz", response_model=a.ReadyResponse, responses=problems(503))
@not_audited("readiness")
def readyz(request: Request) -> a.ReadyResponse:
    """Models are loaded and the database answers."""
    service: FaceService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("The models are not loaded yet.")
    service.ready()
    # A status only: the endpoint needs no key, so it tells nothing about the gallery.
    loaded = service.index_ready.is_set()
    return a.ReadyResponse(status="ready", identify="ready" if loaded else "loading")


@router.get(
    "/info", response_model=a.InfoResponse, responses=problems(401), dependencies=[require(None)]
)
@not_audited("the models and counts, no biometric data")
def info(
    request: Request, service: ServiceDep, settings: SettingsDep, who: PrincipalDep
) -> a.InfoResponse:
    """Models, their hashes and licences, the threshold, calibration, what the key may
    do, and the size of the collections it may see."""
    weights = request.app.state.weights
    matches = service.calibration_matches_pipeline()
    about = service.info()
    if who.collection is not None:
        counts = service.gallery_counts(who.collection)
        per_collection = {who.collection: counts["faces"]}
    else:
        counts = service.gallery_counts()
        largest = sorted(service.collection_face_counts().items(), key=lambda kv: -kv[1])
        per_collection = dict(largest[:INFO_COLLECTIONS])
    return a.InfoResponse(
        service="faceverify",
        version=request.app.version,
        models=[
            a.InfoModel(name=w.name, file=w.path.name, sha256=w.sha256, licence=w.licence)
            for w in weights.values()
        ],
        encoder=about.names.encoder,
        model=about.names.model,
        pipeline_version=about.names.pipeline_version,
        threshold=settings.threshold,
        calibration={
            **about.calibration,
            "calibration_matches_pipeline": matches,
            "curves": [
                {**curve, "curve": name, "scores": CURVE_USES[name]}
                for name, curve in about.curves.items()
            ],
        },
        calibration_matches_pipeline=matches,
        gallery=a.GalleryCounts(**counts, collections=per_collection),
        access=a.AccessOut(scopes=list(who.scopes), collection=who.collection),
        privacy=_privacy(service, about, settings, who.collection),
        build=a.BuildOut(
            sbom=_path_or_none(shipped_file(SBOM_NAME)),
            licenses=_path_or_none(shipped_file(LICENSES_NAME)),
        ),
        settings=a.InfoSettings(
            **{name: getattr(settings, name) for name in INFO_SETTINGS},
            database=settings.resolved_database_url().split(":", 1)[0],
            vector_search=about.vector_search,
        ),
    )


def _path_or_none(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _privacy(
    service: FaceService, about: ServiceInfo, settings: Settings, bound: str | None
) -> a.PrivacyOut:
    """The audit, retention and encryption settings, and the schedules the key may see."""
    if bound is not None:
        shown = [service.get_collection(collection=bound)]
    else:
        shown = [
            c
            for c in service.list_collections()
            if c.retention_days is not None or c.consent_required
        ][:INFO_COLLECTIONS]
    return a.PrivacyOut(
        audit_trail=about.audit_trail,
        audit_retention_days=settings.audit_retention_days,
        purge_interval_seconds=settings.purge_interval_seconds,
        encryption_at_rest=about.encryption_at_rest,
        schedules={c.id: collection_out(c, settings.identify_fpir) for c in shown},
    )
