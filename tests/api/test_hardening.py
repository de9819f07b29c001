"""Issue 9's findings 3, 5-13: each as a test that failed before its fix."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import httpx2
import pytest
from fastapi.testclient import TestClient

from tests.fakes import face, fake_image
from tests.helpers import AUTH, TEST_KEY, assert_problem, b64, parts
from tests.server import serving


def _keyed_routes(app) -> list[tuple[str, str]]:
    """Every (method, path) that needs an API key, from the app's own OpenAPI schema
    (so a new route is covered without being listed here)."""
    open_paths = {"/healthz", "/readyz"}
    out = []
    for path, operations in app.openapi()["paths"].items():
        if path not in open_paths:
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            out.extend((method.upper(), concrete) for method in operations)
    return out


# ---- 3: the key is checked from the headers before any body is read --------------------
def test_every_keyed_route_answers_401_before_parsing_a_malformed_body(
    fake_client: TestClient,
) -> None:
    routes = _keyed_routes(fake_client.app)
    assert ("POST", "/keys") in routes and len(routes) >= 12
    for method, path in routes:
        r = fake_client.request(
            method,
            path,
            content=b"{not json",
            headers={"X-API-Key": "", "content-type": "application/json"},
        )
        assert_problem(r, 401, "unauthorized")


def test_post_keys_body_is_capped_like_every_other(fake_client: TestClient) -> None:
    cap = fake_client.app.state.settings.max_upload_bytes
    big = b'{"name": "' + b"a" * cap + b'"}'
    assert_problem(
        fake_client.post("/keys", content=big, headers={"X-API-Key": ""}), 401, "unauthorized"
    )
    r = fake_client.post("/keys", content=big, headers={"content-type": "application/json"})
    assert_problem(r, 413, "request_too_large")
    r = fake_client.post("/keys", json={"name": "ci", "scopes": ["verify"]})
    assert r.status_code == 201 and r.json()["key"].startswith("fv_")


# ---- 5: metric labels come from closed sets ----------------------------------------------
def test_made_up_methods_do_not_grow_metrics(fake_client: TestClient) -> None:
    for i in range(50):
        fake_client.request(f"BREW{i}", "/nowhere", headers={"X-API-Key": ""})
    text = fake_client.get("/metrics").text
    assert "BREW" not in text
    assert 'method="other"' in text


# ---- 8: deep JSON and NaN are 4xx -------------------------------------------------------
@pytest.mark.parametrize("depth", [40, 5_000, 100_000])
def test_deeply_nested_json_bodies_are_422(fake_client: TestClient, depth: int) -> None:
    body = '{"a": ' + "[" * depth + "]" * depth + "}"
    r = fake_client.post("/verify", content=body, headers={"content-type": "application/json"})
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize(
    "metadata",
    ['{"a": NaN}', '{"a": Infinity}', "[" * 5000 + "]" * 5000, '{"a":' * 9 + "1" + "}" * 9],
)
def test_bad_metadata_is_422_in_multipart_and_json(fake_client: TestClient, metadata: str) -> None:
    image = fake_image(face(1))
    r = fake_client.post(
        "/enroll", data={"subject_id": "m", "metadata": metadata}, files={"image": image}
    )
    assert_problem(r, 422, "validation_error")
    body = f'{{"subject_id": "m", "image": "{b64(image)}", "metadata": {metadata}}}'
    r = fake_client.post("/enroll", content=body, headers={"content-type": "application/json"})
    assert_problem(r, 422, "validation_error")
    assert_problem(fake_client.get("/subjects/m"), 404, "subject_not_found")


# ---- 10: security headers, /docs from local files ------------------------------------------
def test_pages_cannot_be_framed_and_carry_a_csp(fake_client: TestClient) -> None:
    for path in ("/", "/docs", "/healthz", "/static/app.js"):
        r = fake_client.get(path)
        assert r.status_code == 200, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    docs = fake_client.get("/docs").text
    assert "cdn" not in docs.lower() and "http" not in docs.replace("http-equiv", "")
    assert fake_client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    assert "'unsafe-inline'" not in fake_client.get("/").headers["content-security-policy"]


# ---- 11, 12: no Host-based redirects; 405 with Allow; HEAD -----------------------------
def test_trailing_slash_is_not_redirected_to_the_host_header(fake_client: TestClient) -> None:
    r = fake_client.get(
        "/subjects/obama/", headers={"Host": "evil.example"}, follow_redirects=False
    )
    assert r.status_code == 404 and "location" not in r.headers


def test_405_names_the_allowed_methods_and_head_works(fake_client: TestClient) -> None:
    r = fake_client.put("/verify")
    assert_problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    for path in ("/", "/healthz", "/readyz"):
        head = fake_client.head(path)
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers["content-length"] == fake_client.get(path).headers["content-length"]


# ---- 13: unauthenticated endpoints say no more than a status -----------------------------
def test_readyz_and_403_tell_nothing_about_the_gallery_or_the_key(
    fake_client: TestClient, settings
) -> None:
    fake_client.post("/enroll", json={"subject_id": "ann", "image": b64(fake_image(face(1)))})
    ready = fake_client.get("/readyz", headers={"X-API-Key": ""}).json()
    assert ready == {"status": "ready", "identify": "ready"}  # a status, no gallery figures
    key = fake_client.post("/keys", json={"name": "v", "scopes": ["verify"]}).json()["key"]
    body = assert_problem(
        fake_client.get("/subjects", headers={"X-API-Key": key}), 403, "forbidden"
    )
    assert "verify" not in body["detail"]


# ---- 6, 7, 9: against a real server -------------------------------------------------------
def _trickle(port: int, path: str = "/verify") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {TEST_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
    )
    return sock


@pytest.mark.slow
def test_slow_uploads_hold_no_place_and_are_cut_off(tmp_path: Path) -> None:
    env = {
        "FACEVERIFY_DATA_DIR": str(tmp_path),
        "FACEVERIFY_MAX_CONCURRENT_INFERENCE": "1",
        "FACEVERIFY_MAX_QUEUED_REQUESTS": "1",
        "FACEVERIFY_UPLOAD_GRACE_SECONDS": "3",
        "FACEVERIFY_DETECT_CNN_MAX_SIDE": "0",
    }
    with serving(env) as url, httpx2.Client(base_url=url, headers=AUTH, timeout=30) as http:
        port = int(url.rsplit(":", 1)[1])
        slow = [_trickle(port) for _ in range(10)]  # far more than the 2 admission places
        time.sleep(0.5)
        image = b"not a photo"  # answered 415 after admission
        for _ in range(3):
            r = http.post("/compare", files={"image_a": image, "image_b": image})
            assert r.status_code == 415, r.text  # admitted, not 429
        time.sleep(4)
        for sock in slow:
            sock.settimeout(5)
            answer = sock.recv(4096).decode()
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "request_body_timeout" in answer
            sock.close()
        log = next(tmp_path.glob("server-*.log")).read_text()
    assert "Traceback" not in log


@pytest.mark.slow
def test_disconnects_are_one_info_line_and_workers_log_json(tmp_path: Path) -> None:
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path)}
    with serving(env, "--workers", "2") as url:
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):
            _trickle(port).close()  # gone mid-body
        httpx2.get(url + "/healthz", headers={"X-Request-ID": "probe-123"})
        time.sleep(1)
    lines = next(tmp_path.glob("server-*.log")).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert "Traceback" not in "\n".join(lines)
    access = [r for r in records if r["logger"] == "faceverify.access"]
    assert any(r["request_id"] == "probe-123" and r["route"] == "/healthz" for r in access)
    assert sum("faceverify ready" in r["msg"] for r in records) == 2  # one per worker
    assert all(r["level"] != "error" for r in records)


# ---- 2: a timed-out enroll stores nothing; Idempotency-Key -------------------------------
def test_a_timed_out_enroll_stores_nothing_and_a_keyed_retry_stores_once(settings) -> None:
    from app.api.app import create_app
    from tests.helpers import fake_service as _fake_service

    # 1 s leaves the keyed requests below ample time when other tests load the cores.
    slow = settings.model_copy(update={"request_timeout_seconds": 1.0})
    service = _fake_service(slow)
    app = create_app(slow, builder=lambda s: (service, {}))
    image = {"image": fake_image(face(1))}
    with TestClient(app, headers=AUTH) as client:
        parts(service).pipeline.encoder.delay = 2.0  # type: ignore[attr-defined]
        r = client.post("/enroll", data={"subject_id": "late"}, files=image)
        assert_problem(r, 503, "request_timeout")
        time.sleep(1.5)  # the inference thread has finished by now
        assert_problem(client.get("/subjects/late"), 404, "subject_not_found")

        parts(service).pipeline.encoder.delay = 0.0  # type: ignore[attr-defined]
        key = {"Idempotency-Key": "enroll-late-1"}
        first = client.post("/enroll", data={"subject_id": "late"}, files=image, headers=key)
        again = client.post("/enroll", data={"subject_id": "late"}, files=image, headers=key)
        assert first.status_code == again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["faces"] == first.json()["faces"]
        assert client.get("/subjects/late").json()["face_count"] == 1
        other = client.post("/enroll", data={"subject_id": "x"}, files=image, headers=key)
        assert_problem(other, 422, "idempotency_key_reused")
        bad = client.post(
            "/enroll", data={"subject_id": "y"}, files=image, headers={"Idempotency-Key": "a b"}
        )
        assert_problem(bad, 422, "validation_error")


# ---- 14: no takeover of a subject ----------------------------------------------------------
def test_an_enroll_key_cannot_take_over_a_subject(fake_client: TestClient) -> None:
    key = fake_client.post("/keys", json={"name": "e", "scopes": ["enroll"]}).json()["key"]
    as_enroll = {"X-API-Key": key}
    victim = {"image": fake_image(face(1))}
    other = {"image": fake_image(face(2))}
    r = fake_client.post("/enroll", data={"subject_id": "victim"}, files=victim)
    assert r.status_code == 201
    hijack = {"subject_id": "victim", "name": "hijacked"}
    r = fake_client.post("/enroll", data=hijack, files=other, headers=as_enroll)
    assert_problem(r, 409, "subject_exists")
    r = fake_client.post("/enroll", data={**hijack, "add": "true"}, files=other, headers=as_enroll)
    body = assert_problem(r, 422, "face_mismatch")
    assert body["distance"] > body["threshold"]
    r = fake_client.post(
        "/enroll", data={**hijack, "add": "true", "force": "true"}, files=other, headers=as_enroll
    )
    assert_problem(r, 403, "forbidden")
    subject = fake_client.get("/subjects/victim").json()
    assert subject["face_count"] == 1 and subject["name"] is None
    verify = fake_client.post("/verify", data={"subject_id": "victim"}, files=other).json()
    assert verify["match"] is False


def test_look_alike_subject_ids_are_one_id_or_refused(fake_client: TestClient) -> None:
    image = {"image": fake_image(face(1))}
    assert fake_client.post("/enroll", data={"subject_id": "ABC"}, files=image).status_code == 201
    r = fake_client.post("/enroll", data={"subject_id": "ＡＢＣ"}, files=image)
    assert_problem(r, 409, "subject_exists")  # fullwidth is the same id after NFKC
    assert fake_client.get("/subjects/ＡＢＣ").json()["subject_id"] == "ABC"
    r = fake_client.post("/enroll", data={"subject_id": "ob\u0430ma"}, files=image)  # Cyrillic а
    assert_problem(r, 422, "validation_error")
    for fine in ("José-Ñ.1", "山田太郎", "やまだ太郎", "Ωμέγα"):
        r = fake_client.post("/enroll", data={"subject_id": fine}, files=image)
        assert r.status_code == 201, (fine, r.text)


def test_enrollments_over_the_photo_cap_are_refused(fake_client: TestClient) -> None:
    cap = fake_client.app.state.settings.max_enroll_images
    files = [("image", fake_image(face(1)))] * (cap + 1)
    r = fake_client.post("/enroll", data={"subject_id": "many"}, files=files)
    assert_problem(r, 422, "too_many_images")
