"""What several test modules share: paths, the test key, a fake service, and
assertions. Fixtures are in conftest.py; test modules import helpers from here only."""

from __future__ import annotations

import base64
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from app.gallery.search import PgvectorSearch
from app.scoring.calibration import Calibration
from app.service import FaceService
from app.service.build import open_store
from app.settings import Settings
from tests.fakes import fake_pipeline

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


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def assert_problem(response, status: int, code: str) -> dict:
    """An RFC 9457 answer with this status and code, and no traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    assert "Traceback" not in response.text
    return body


def fake_service(
    settings: Settings,
    *,
    delay: float = 0.0,
    also_compatible: frozenset[str] = frozenset(),
    pgvector: bool = False,
) -> FaceService:
    """The real service, store and calibration, with the fake detector and encoder;
    ``pgvector``: search in PostgreSQL (the test database must have the extension).
    The enrollment quality gate is off: a fake face is a flat colour, which the quality
    measures read as a featureless blur (tests/face/test_quality.py tests the gate on
    real photos)."""
    settings = settings.model_copy(update={"enroll_min_quality": 0})
    store = open_store(settings)  # migrated, with the settings' encryption key
    pipeline = fake_pipeline(
        max_pixels=settings.max_image_pixels,
        delay=delay,
        also_compatible=also_compatible,
        template_views=settings.template_views,
    )
    search = None
    if pgvector:
        assert store.enable_vectors(dim=128), "pgvector is not available"
        search = PgvectorSearch(
            store, encoders=pipeline.compatible, ef_search=settings.pgvector_ef_search
        )
    return FaceService(
        settings=settings,
        pipeline=pipeline,
        store=store,
        calibration=Calibration.load(settings.resolved_calibration_file()),
        search=search,
    )


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


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
