"""Metrics, request ids, JSON logs and HEIC photos."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.face.image import decode_image
from app.logs import JsonFormatter, request_id_var
from tests.fakes import face, fake_image
from tests.helpers import b64, data


def test_metrics_count_requests_stages_scores_and_gallery(fake_client: TestClient) -> None:
    fake_client.post("/enroll", json={"subject_id": "ann", "image": b64(fake_image(face(1)))})
    fake_client.post("/verify", json={"subject_id": "ann", "image": b64(fake_image(face(1)))})
    fake_client.post("/verify", json={"subject_id": "nobody", "image": b64(fake_image(face(1)))})
    text = fake_client.get("/metrics").text
    assert 'faceverify_requests_total{method="POST",route="/verify",status="200"} 1.0' in text
    assert 'faceverify_requests_total{method="POST",route="/verify",status="404"} 1.0' in text
    assert 'faceverify_match_score_percent_count{endpoint="verify"} 1.0' in text
    assert "faceverify_gallery_faces 1.0" in text and "faceverify_gallery_subjects 1.0" in text
    assert "faceverify_request_seconds_bucket" in text
    assert "ann" not in text  # subject ids are never labels


def test_request_ids_are_echoed_or_made(fake_client: TestClient) -> None:
    r = fake_client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = fake_client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})
    assert made.headers["x-request-id"] != "bad id\nwith newline"
    assert len(made.headers["x-request-id"]) == 32


def test_json_log_lines_carry_the_request_id() -> None:
    token = request_id_var.set("rid-1")
    try:
        record = logging.LogRecord(
            "faceverify", logging.INFO, __file__, 1, "hello %s", ("x",), None
        )
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["msg"] == "hello x" and line["request_id"] == "rid-1" and line["level"] == "info"


def test_heic_photos_decode() -> None:
    from pillow_heif import from_pillow

    buf = io.BytesIO()
    with Image.open(io.BytesIO(data("hopper.png"))) as img:
        from_pillow(img.convert("RGB")).save(buf, quality=90)
    rgb = decode_image(buf.getvalue(), max_pixels=10**7)
    reference = decode_image(data("hopper.png"), max_pixels=10**7).astype(float)
    assert rgb.shape == (128, 128, 3)
    # Lossy HEIC at quality 90: within 10 levels on average of the PNG.
    assert np.abs(rgb.astype(float) - reference).mean() < 10


def test_start_up_logs_skip_alembics_plugin_announcements() -> None:
    import logging

    from app.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json")
        assert not logging.getLogger("alembic.runtime.plugins").isEnabledFor(logging.INFO)
        assert logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.NOTSET)
