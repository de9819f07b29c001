"""What several test modules share: paths, the test key, a fake service, and
assertions. Fixtures are in conftest.py; test modules import helpers from here only."""

from __future__ import annotations

import base64
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from app.gallery import Gallery, IdempotencyClaim
from app.privacy.erasure import Erasure
from app.scoring.calibration import Calibration
from app.service import FaceService
from app.service.build import open_gallery, vector_backend
from app.service.collections import Collections
from app.service.enroll import NewEnrollment, write_enrollment
from app.service.records import SubjectRecords
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
    """The real service, gallery and calibration, with the fake detector and encoder;
    ``pgvector``: search in PostgreSQL (the test database must have the extension; else
    an exact index in this process, loaded before this returns). The enrollment quality
    gate is off: a fake face is a flat colour, which the quality measures read as a
    featureless blur (tests/face/test_quality.py tests the gate on real photos)."""
    settings = settings.model_copy(update={"enroll_min_quality": 0})
    gallery = open_gallery(settings)  # migrated, with the settings' encryption key
    pipeline = fake_pipeline(
        max_pixels=settings.max_image_pixels,
        delay=delay,
        also_compatible=also_compatible,
        template_views=settings.template_views,
    )
    return service_on(
        settings, gallery, pipeline, vector_search="pgvector" if pgvector else "memory"
    )


def service_on(
    settings: Settings,
    gallery: Gallery,
    pipeline: Any = None,
    *,
    background: bool = False,
    vector_search: str = "memory",
    memory_index: str = "exact",
) -> FaceService:
    """A service on ``gallery`` (the fake pipeline unless one is given), its vector
    backend picked by build.py as a server's is (an exact index in memory by default,
    loaded before this returns unless ``background``)."""
    pipeline = pipeline or fake_pipeline(template_views=settings.template_views)
    picked = settings.model_copy(
        update={"vector_search": vector_search, "memory_index": memory_index}
    )
    vectors = vector_backend(
        picked, gallery, dim=pipeline.dim, encoders=pipeline.compatible, background=background
    )
    return FaceService(
        settings=settings,
        pipeline=pipeline,
        gallery=gallery,
        calibration=Calibration.load(settings.resolved_calibration_file()),
        vectors=vectors,
    )


@dataclass(frozen=True)
class Parts:
    """A service's parts, as a test looks at them (the application never does: it calls
    the service's methods)."""

    settings: Settings
    pipeline: Any
    gallery: Gallery
    calibration: Calibration
    vectors: Any
    retention: Any
    audit: Any
    erasure: Erasure
    probes: Any


def parts(service: FaceService) -> Parts:
    return Parts(
        service._settings,  # noqa: SLF001 - a test's look inside
        service._pipeline,  # noqa: SLF001
        service._gallery,  # noqa: SLF001
        service._calibration,  # noqa: SLF001
        service._vectors,  # noqa: SLF001
        service._retention,  # noqa: SLF001
        service._audit,  # noqa: SLF001
        service._erasure,  # noqa: SLF001
        service._probes,  # noqa: SLF001
    )


def add_faces(
    gallery: Gallery,
    *,
    idempotency: IdempotencyClaim | None = None,
    now: datetime | None = None,
    **new: Any,
) -> tuple[list[Any], Any, int]:
    """An enrollment's write (app/service/enroll.py), as the tests of the gallery make
    one: the stored faces, the subject and the version written."""
    return write_enrollment(gallery, NewEnrollment(**new), claim=idempotency, now=now)


def delete_subject(gallery: Gallery, *, collection: str, subject_id: str) -> tuple[list[str], int]:
    """Delete a subject in one transaction: its face ids and the version written."""
    with gallery.transaction() as tx:
        face_ids = tx.subjects.delete(collection, subject_id)
    return face_ids, tx.version


def delete_face(gallery: Gallery, *, collection: str, subject_id: str, face_id: str) -> int:
    with gallery.transaction() as tx:
        tx.faces.delete(collection, subject_id, face_id)
    return tx.version


def collections(gallery: Gallery) -> Collections:
    """The collection use cases on ``gallery`` (as the command line has them)."""
    return Collections(gallery, Erasure(gallery.database))


def subject_records(gallery: Gallery) -> SubjectRecords:
    return SubjectRecords(gallery, Erasure(gallery.database))


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
