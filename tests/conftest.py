from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from app.api.app import create_app
from app.gallery.index import EmbeddingIndex
from app.gallery.store import GalleryStore
from app.scoring.calibration import Calibration
from app.service import FaceService, build_service
from app.settings import Settings
from tests.fakes import FakePipeline

DATA = Path(__file__).parent / "data"
# The same Grace Hopper photo in every format and mode the decoder reads.
HOPPER_VARIANTS = [
    "hopper.png",
    "hopper.webp",
    "hopper.gif",
    "hopper.bmp",
    "hopper.tif",
    "hopper.ppm",
    "hopper_gray.jpg",
    "hopper_16bit.pgm",
]
# An admin key for the test servers (FACEVERIFY_API_KEYS form), and its header.
TEST_KEY = "test-admin-key-0123456789"
AUTH = {"X-API-Key": TEST_KEY}


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards. Needs
    FACEVERIFY_TEST_POSTGRES_URL (a role with CREATEDB; .ci/run sets it up)."""
    admin_url = os.environ.get("FACEVERIFY_TEST_POSTGRES_URL")
    if not admin_url:
        if os.environ.get("CI"):
            pytest.fail("FACEVERIFY_TEST_POSTGRES_URL is not set; .ci/run must start PostgreSQL")
        pytest.skip("no PostgreSQL (set FACEVERIFY_TEST_POSTGRES_URL; see .ci/postgres.sh)")
    name = f"fv_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        max_concurrent_inference=2,
        inference_wait_seconds=1,
        api_keys=f"{TEST_KEY}:admin",
    )


@pytest.fixture
def fake_service(settings: Settings) -> Iterator[FaceService]:
    service = _fake_service(settings)
    yield service
    service.store.close()


def _fake_service(settings: Settings) -> FaceService:
    return FaceService(
        settings=settings,
        pipeline=FakePipeline(),
        store=GalleryStore(settings.resolved_database_url()),
        index=EmbeddingIndex(),
        calibration=Calibration.load(settings.resolved_calibration_file()),
    )


@pytest.fixture
def fake_client(settings: Settings) -> Iterator[TestClient]:
    """The real app and store, with the fake pipeline in place of dlib."""
    app = create_app(settings, builder=lambda s: (_fake_service(s), {}))
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="session")
def real_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaceService]:
    """The real dlib models, loaded once for the session, on a fresh SQLite file."""
    service, _ = build_service(Settings(data_dir=tmp_path_factory.mktemp("real")))
    yield service
    service.store.close()


@pytest.fixture(scope="module")
def real_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("api"), api_keys=f"{TEST_KEY}:admin")
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=AUTH) as client:
        yield client
