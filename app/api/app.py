"""The application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.api import observability, problems
from app.api.deps import Admission
from app.api.observability import Metrics
from app.api.routes import router
from app.face.weights import WeightFile
from app.keys import KeyStore, parse_env_keys
from app.service import FaceService, build_service
from app.settings import Settings

log = logging.getLogger("faceverify")


def _version() -> str:
    try:
        return version("faceverify")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(
    settings: Settings | None = None,
    *,
    builder: Callable[[Settings], tuple[FaceService, dict[str, WeightFile]]] = build_service,
) -> FastAPI:
    """Build the app. Models load in the lifespan (not at import), so tests run it with
    ``with TestClient(create_app(settings))``; ``builder`` lets unit tests hand in a
    service with a fake pipeline."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        env_keys = parse_env_keys(settings.api_keys.get_secret_value())
        service, weights = builder(settings)
        app.state.service = service
        app.state.weights = weights
        app.state.keys = KeyStore(service.store.engine, env_keys)
        app.state.metrics = Metrics(service.gallery_counts)
        app.state.admission = Admission(
            settings.max_concurrent_inference + settings.max_queued_requests
        )
        log.info(
            "faceverify ready: encoder=%s, %d faces of %d subjects, database=%s",
            service.pipeline.encoder_name,
            len(service.index),
            service.index.subject_count,
            settings.resolved_database_url().split(":", 1)[0],
        )
        if not service.calibration_matches_pipeline():
            log.warning(
                "calibration %s was not fitted for these pipeline settings (%s); the match "
                "percent may not mean what it says. Run `faceverify calibrate` to refit.",
                service.calibration.version,
                "provisional" if service.calibration.provisional else "settings differ",
            )
        try:
            yield
        finally:
            service.store.close()

    app = FastAPI(
        title="faceverify",
        version=_version(),
        summary="Face verification with dlib's ResNet embeddings and a calibrated match percent.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    problems.install(app)
    observability.install(app)
    app.include_router(router)
    _add_web_page(app)
    return app


STATIC = Path(__file__).resolve().parent.parent / "web" / "static"


def _add_web_page(app: FastAPI) -> None:
    """The try-it page at / (plain HTML, CSS and JS: no build step)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` and worker processes: settings from the environment."""
    return create_app(Settings())
