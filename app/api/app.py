"""The application factory."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api import observability, problems
from app.api.audit import AuditAnswers, not_audited, undeclared
from app.api.deps import Admission
from app.api.guards import PAGE_CSP, BodyGuard, HeadAsGet, SecurityHeaders
from app.api.lanes import Lanes
from app.api.observability import Metrics
from app.api.ratelimit import RateLimiter
from app.api.rekognition import protocol as rekognition
from app.api.routes import router
from app.face.weights import WeightFile
from app.keys import KeyStore, parse_env_keys
from app.logs import configure_logging
from app.memory import return_large_blocks_to_the_system
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

    lifespan = _lifespan(settings, builder)
    app = FastAPI(
        # /docs is served below from the installed Swagger UI, not from a CDN; no ReDoc.
        docs_url=None,
        redoc_url=None,
        title="faceverify",
        version=_version(),
        summary="Face verification with dlib's ResNet embeddings and a calibrated match percent.",
        lifespan=lifespan,
        # Starlette's trailing-slash redirect builds an absolute URL from the Host header
        # (issue 9: Host: evil.example -> 307 to http://evil.example/...). A path with a
        # trailing slash is simply not found.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.rate_limiter = (
        RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        if settings.rate_limit_per_second
        else None
    )
    problems.install(app)
    # Innermost first: the body guard sits inside the request-id/metrics middleware, so
    # its 413s are logged and counted like any other answer.
    app.add_middleware(
        BodyGuard,
        max_bytes=settings.max_upload_bytes,
        min_rate=settings.min_upload_bytes_per_second,
        grace=settings.upload_grace_seconds,
    )
    observability.install(app)
    # Outside the request-id middleware: it sees every answer, timeouts included.
    app.add_middleware(AuditAnswers)
    app.add_middleware(HeadAsGet)
    app.add_middleware(SecurityHeaders, csp_for=_csp_for)
    app.include_router(router)
    # Amazon Rekognition's face API: POST / (issue 40, docs/REKOGNITION.md).
    app.include_router(rekognition.router)
    rekognition.install(app)
    _add_web_page(app)
    _add_docs(app)
    if missing := undeclared(app.routes):
        # Every route says whether it touches biometric data (app/api/audit.py).
        raise RuntimeError(f"routes that declare neither audited nor not_audited: {missing}")
    return app


def _lifespan(
    settings: Settings, builder: Callable[[Settings], tuple[FaceService, dict[str, WeightFile]]]
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shut-down: the models, the store, the keys, the gates."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        return_large_blocks_to_the_system()
        env_keys = parse_env_keys(settings.api_keys.get_secret_value())
        service, weights = builder(settings)
        app.state.service = service
        app.state.weights = weights
        app.state.audit = service.audit_trail()
        service.start_upkeep()
        app.state.keys = service.key_store(env_keys)
        _create_env_key_collections(service, app.state.keys)
        app.state.metrics = Metrics(service.gallery_counts, service.collection_face_counts)
        app.state.lanes = Lanes(settings.max_concurrent_inference + settings.max_queued_requests)
        app.state.admission = Admission(
            settings.max_concurrent_inference + settings.max_queued_requests,
            per_key=settings.max_concurrent_inference
            + settings.tenant_reserve_slots
            + settings.max_queued_per_key,
        )
        log.info(
            "faceverify ready: encoder=%s, database=%s (the 1:N index loads in the background)",
            service.names().encoder,
            settings.resolved_database_url().split(":", 1)[0],
        )
        _warn_of_calibration(service)
        try:
            yield
        finally:
            app.state.lanes.close()
            app.state.audit = None
            service.close()

    return lifespan


def _warn_of_calibration(service: FaceService) -> None:
    """A curve in use that is missing or was fitted for other settings: say so."""
    about = service.info()
    for curve in service.curves_in_use():
        if not service.curve_matches(curve):
            log.warning(
                "calibration %s: its %s curve %s; the match percent may not mean what it "
                "says. Run `faceverify calibrate` to refit.",
                about.calibration_version,
                curve,
                "is missing (the fast curve stands in)"
                if not about.curves[curve]["present"]
                else "was not fitted for these pipeline settings",
            )


def _create_env_key_collections(service: FaceService, keys: KeyStore) -> None:
    """A key from FACEVERIFY_API_KEYS may name a collection no one created yet. One
    revoked with its collection, or bound to a deleted collection, creates nothing: a
    deleted collection stays deleted until an admin creates it (issue 25)."""
    for hashed, principal in keys.env_keys.items():
        name = principal.collection
        if name is None or service.collection_exists(collection=name):
            continue
        if keys.env_key_revoked(hashed):
            log.warning(
                "FACEVERIFY_API_KEYS: a key bound to %r was revoked when that collection "
                "was deleted and is refused; remove it from the environment",
                name,
            )
        elif service.collection_deleted(collection=name):
            log.warning(
                "FACEVERIFY_API_KEYS: collection %r was deleted; a key bound to it does not "
                "create it again (an admin may: POST /collections)",
                name,
            )
        else:
            service.ensure_collection(collection=name)  # another worker may have


STATIC = Path(__file__).resolve().parent.parent / "web" / "static"


def _add_web_page(app: FastAPI) -> None:
    """The try-it page at / (plain HTML, CSS and JS: no build step)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    @not_audited("the web page")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")


SWAGGER_PREFIX = "/docs-static"


def _swagger_page() -> str:
    html = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="faceverify - API docs",
        swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
        swagger_favicon_url="data:,",
    ).body
    return bytes(html).decode()


def _inline_script_hashes(html: str) -> str:
    """CSP hashes of a page's inline scripts, so they run and nothing else inline does."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
    )


SWAGGER_HTML = _swagger_page()
DOCS_CSP = PAGE_CSP.replace(
    "script-src 'self'", f"script-src 'self' {_inline_script_hashes(SWAGGER_HTML)}"
).replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def _csp_for(path: str) -> str:
    return DOCS_CSP if path == "/docs" else PAGE_CSP


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle-v2 package: no CDN, so no third
    party can change the page that holds an admin's key (issue 9)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(SWAGGER_PREFIX, StaticFiles(directory=str(swagger_ui_path)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    @not_audited("the API's documentation")
    def docs() -> HTMLResponse:
        return HTMLResponse(SWAGGER_HTML)


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` and worker processes: settings from the environment.
    Each worker process configures its own logging (uvicorn's log_config=None leaves it
    unset in the workers), so their lines carry request ids in the chosen format."""
    settings = Settings()
    configure_logging(settings.log_format)
    return create_app(settings)
