"""Fixtures. Shared helpers are in tests/helpers.py, fakes in tests/fakes.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.service import FaceService, build_service
from app.settings import Settings
from tests.helpers import AUTH, TEST_KEY, fresh_postgres_database
from tests.helpers import fake_service as make_fake_service


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
    service = make_fake_service(settings)
    yield service
    service.close()


@pytest.fixture
def fake_client(settings: Settings) -> Iterator[TestClient]:
    """The real app, store and pipeline, with the fake detector and encoder."""
    app = create_app(settings, builder=lambda s: (make_fake_service(s), {}))
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="session")
def real_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaceService]:
    """The real dlib models, loaded once for the session, on a fresh SQLite file."""
    service, _ = build_service(Settings(data_dir=tmp_path_factory.mktemp("real")))
    yield service
    service.close()


@pytest.fixture(scope="module")
def real_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("api"), api_keys=f"{TEST_KEY}:admin")
    with TestClient(create_app(settings), raise_server_exceptions=False, headers=AUTH) as client:
        yield client
