"""API keys: every endpoint but the health checks needs one, with the right scope."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import fastapi.routing
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.api.app import create_app
from app.keys import Principal, digest, parse_env_keys
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import assert_problem, b64, parts
from tests.helpers import fake_service as _fake_service

VERIFY_KEY = "verify-only-key-0123456789"
ENROLL_KEY = "enroll-only-key-0123456789"
ADMIN_KEY = "admin-key-0123456789abcdef"


@pytest.fixture
def client(settings: Settings) -> TestClient:
    keys = f"{VERIFY_KEY}:verify,{ENROLL_KEY}:enroll,{ADMIN_KEY}:admin"
    app = create_app(
        settings.model_copy(update={"api_keys": SecretStr(keys)}),
        builder=lambda s: (_fake_service(s), {}),
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def as_key(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


# The scope each route needs (None: any valid key). Every route of the app must be here
# or in PUBLIC: test_every_route_is_classified fails for a new route that is in neither.
SCOPES: dict[tuple[str, str], str | None] = {
    ("POST", "/enroll"): "enroll",
    ("POST", "/verify"): "verify",
    ("POST", "/identify"): "verify",
    ("POST", "/compare"): "verify",
    ("POST", "/detect"): "verify",
    ("GET", "/subjects"): "admin",
    ("GET", "/subjects/{subject_id}"): "admin",
    ("DELETE", "/subjects/{subject_id}"): "enroll",
    ("DELETE", "/subjects/{subject_id}/faces/{face_id}"): "enroll",
    ("GET", "/keys"): "admin",
    ("POST", "/keys"): "admin",
    ("DELETE", "/keys/{key_id}"): "admin",
    ("GET", "/metrics"): "admin",
    ("GET", "/collections"): "admin",
    ("POST", "/collections"): "admin",
    ("GET", "/collections/{collection_id}"): "admin",
    ("DELETE", "/collections/{collection_id}"): "admin",
    ("PATCH", "/collections/{collection_id}"): "admin",
    ("GET", "/subjects/{subject_id}/export"): "admin",
    ("GET", "/audit"): "admin",
    ("GET", "/info"): None,
}
# For load balancers, orchestrators and people: no key.
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/"), ("GET", "/docs")}
# Amazon Rekognition's API (docs/REKOGNITION.md): AWS Signature Version 4, not a key.
SIGV4 = {("POST", "/")}


def app_routes() -> set[tuple[str, str]]:
    """Every (method, path) the app serves, read from the app itself."""
    app = create_app(Settings())
    # FastAPI >= 0.137 keeps included routers as nodes of a tree; iter_route_contexts
    # flattens it (older versions keep a flat list of routes).
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = walk(app.routes) if walk else app.routes
    return {
        (method, route.path)
        for route in routes
        if isinstance(getattr(route, "original_route", route), APIRoute)
        for method in route.methods
    }


ENDPOINTS = sorted((m, p, SCOPES.get((m, p))) for m, p in app_routes() - PUBLIC - SIGV4)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_is_classified() -> None:
    assert app_routes() == set(SCOPES) | PUBLIC | SIGV4


def test_the_rekognition_endpoint_takes_no_api_key_only_a_signature(client: TestClient) -> None:
    target = {"X-Amz-Target": "RekognitionService.ListCollections"}
    for headers, status, kind in (
        ({}, 403, "MissingAuthenticationTokenException"),
        (as_key(ADMIN_KEY), 403, "MissingAuthenticationTokenException"),
        ({"Authorization": f"Bearer {ADMIN_KEY}"}, 400, "IncompleteSignatureException"),
    ):
        r = client.post("/", content=b"{}", headers={**target, **headers})
        assert (r.status_code, r.json()["__type"]) == (status, kind)


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS)
def test_every_endpoint_needs_a_key(client: TestClient, method: str, path: str, scope) -> None:
    url = concrete(path)
    r = client.request(method, url)
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_problem(
        client.request(method, url, headers=as_key("wrong-key-0123456789")), 401, "unauthorized"
    )


@pytest.mark.parametrize(("method", "path", "scope"), [e for e in ENDPOINTS if e[2]])
def test_a_key_without_the_scope_gets_403(
    client: TestClient, method: str, path: str, scope
) -> None:
    other = {"enroll": VERIFY_KEY, "verify": ENROLL_KEY, "admin": VERIFY_KEY}[scope]
    r = client.request(method, concrete(path), headers=as_key(other))
    body = assert_problem(r, 403, "forbidden")
    assert body["required_scope"] == scope


def test_scoped_keys_do_their_jobs(client: TestClient) -> None:
    image = b64(fake_image(face(1)))
    r = client.post(
        "/enroll", json={"subject_id": "ann", "image": image}, headers=as_key(ENROLL_KEY)
    )
    assert r.status_code == 201
    r = client.post(
        "/verify",
        json={"subject_id": "ann", "image": image},
        headers={"Authorization": f"Bearer {VERIFY_KEY}"},
    )
    assert r.status_code == 200 and r.json()["match"]
    assert client.get("/subjects", headers=as_key(ADMIN_KEY)).json()["total"] == 1
    assert client.get("/info", headers=as_key(VERIFY_KEY)).status_code == 200


def test_health_checks_and_the_page_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/").status_code == 200


def test_the_key_is_checked_before_the_body_is_read(client: TestClient) -> None:
    big = b"\0" * (client.app.state.settings.max_upload_bytes + 10)
    assert_problem(client.post("/verify", files={"image": big}), 401, "unauthorized")


def test_keys_are_created_shown_once_stored_hashed_and_revocable(client: TestClient) -> None:
    admin = as_key(ADMIN_KEY)
    r = client.post("/keys", json={"name": "kiosk", "scopes": ["verify"]}, headers=admin)
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith("fv_") and len(key) >= 43  # 32 random bytes, base64url
    listed = client.get("/keys", headers=admin).json()
    assert [k["key_id"] for k in listed] == [created["key_id"]] and "key" not in listed[0]
    # Only the hash is in the database.
    with parts(client.app.state.service).gallery.database.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT key_sha256, prefix FROM api_keys").all()
    assert stored == [(digest(key), key[:10])]
    assert client.get("/info", headers=as_key(key)).status_code == 200
    assert client.delete(f"/keys/{created['key_id']}", headers=admin).json()["revoked_at"]
    assert_problem(client.get("/info", headers=as_key(key)), 401, "unauthorized")
    assert_problem(client.delete(f"/keys/{created['key_id']}", headers=admin), 404, "key_not_found")
    assert_problem(
        client.post("/keys", json={"name": "x", "scopes": ["root"]}, headers=admin),
        422,
        "validation_error",
    )


def test_environment_keys_must_be_long_and_well_formed() -> None:
    assert parse_env_keys("") == {}
    parsed = parse_env_keys(
        f"{VERIFY_KEY}:verify+enroll,{ADMIN_KEY}:admin,{ENROLL_KEY}:enroll@door"
    )

    def env(key: str) -> str:
        return f"env-{digest(key)[:12]}"

    assert parsed[digest(VERIFY_KEY)] == Principal(("enroll", "verify"), "default", env(VERIFY_KEY))
    assert parsed[digest(ADMIN_KEY)] == Principal(("admin",), None, env(ADMIN_KEY))
    assert parsed[digest(ENROLL_KEY)] == Principal(("enroll",), "door", env(ENROLL_KEY))
    bad_keys = ("short:verify", f"{VERIFY_KEY}", f"{VERIFY_KEY}:root", f"{VERIFY_KEY}:")
    for bad in (*bad_keys, f"{VERIFY_KEY}:verify@no/slash", f"{VERIFY_KEY}:verify@"):
        with pytest.raises(ValueError):
            parse_env_keys(bad)


FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACEVERIFY_DATA_DIR": str(data_dir)}
    env.pop("FACEVERIFY_API_KEYS", None)
    return subprocess.run([FACEVERIFY, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    made = cli("keys", "create", "--scope", "enroll+verify", "--name", "door", data_dir=tmp_path)
    assert made.returncode == 0, made.stderr
    key = made.stdout.split()[0]
    assert key.startswith("fv_")
    listed = cli("keys", "list", data_dir=tmp_path).stdout
    key_id = listed.split()[0]
    assert "enroll+verify" in listed and "active" in listed and key not in listed
    assert cli("keys", "revoke", key_id, data_dir=tmp_path).returncode == 0
    assert "revoked" in cli("keys", "list", data_dir=tmp_path).stdout
    assert cli("keys", "revoke", key_id, data_dir=tmp_path).returncode == 2
    bad = cli("keys", "create", "--scope", "root", "--name", "x", data_dir=tmp_path)
    assert bad.returncode == 2 and "scopes must be" in bad.stderr
    # Bound to a collection (made with the key), shown in the list.
    bound = cli(
        "keys", "create", "--scope", "verify", "--name", "lobby", "--collection", "lobby",
        data_dir=tmp_path,
    )  # fmt: skip
    assert bound.returncode == 0 and "collection lobby" in bound.stdout
    line = next(
        x for x in cli("keys", "list", data_dir=tmp_path).stdout.splitlines() if "lobby" in x
    )
    assert line.split()[3] == "lobby"
    bad = cli(
        "keys",
        "create",
        "--scope",
        "verify",
        "--name",
        "x",
        "--collection",
        "a/b",
        data_dir=tmp_path,
    )
    assert bad.returncode == 2 and "not a collection id" in bad.stderr
