"""The audit trail (issue 27): every request that touches biometric data has its event,
written before the answer; the hash chain shows a change, a removal or a reordering;
pruning keeps it verifiable."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.api.app import create_app
from app.api.audit import audit_actions, not_audited, undeclared
from app.gallery import Gallery
from app.privacy.events import AuditDraft
from app.privacy.trail import AuditTrail
from app.settings import Settings
from tests.api.test_auth import PUBLIC, app_routes
from tests.fakes import face, fake_image
from tests.helpers import AUTH, TEST_KEY, assert_problem
from tests.helpers import fake_service as make_fake_service

# What each audited route is called in the trail, and the status its success answers
# (declared on each route in app/api with @audited).
ACTIONS: dict[tuple[str, str], tuple[str, int]] = {
    ("POST", "/enroll"): ("enroll", 201),
    ("POST", "/verify"): ("verify", 200),
    ("POST", "/identify"): ("identify", 200),
    ("POST", "/compare"): ("compare", 200),
    ("POST", "/detect"): ("detect", 200),
    ("GET", "/subjects"): ("list_subjects", 200),
    ("GET", "/subjects/{subject_id}"): ("read_subject", 200),
    ("GET", "/subjects/{subject_id}/export"): ("export_subject", 200),
    ("DELETE", "/subjects/{subject_id}"): ("delete_subject", 200),
    ("DELETE", "/subjects/{subject_id}/faces/{face_id}"): ("delete_face", 200),
    ("POST", "/collections"): ("create_collection", 201),
    ("PATCH", "/collections/{collection_id}"): ("update_collection", 200),
    ("DELETE", "/collections/{collection_id}"): ("delete_collection", 200),
    ("POST", "/keys"): ("create_key", 201),
    ("DELETE", "/keys/{key_id}"): ("revoke_key", 200),
    ("GET", "/audit"): ("read_audit", 200),
    # The Rekognition API: each call's own action, aws_<operation> (app/api/rekognition).
    ("POST", "/"): ("rekognition", 200),
}
# Routes that touch no biometric data, so they record nothing.
UNAUDITED = PUBLIC | {
    ("GET", "/info"),
    ("GET", "/metrics"),
    ("GET", "/keys"),
    ("GET", "/collections"),
    ("GET", "/collections/{collection_id}"),
}


def events(client: TestClient) -> list[dict]:
    """Every event, read from the database (not through the API, which adds its own)."""
    trail: AuditTrail = client.app.state.audit  # type: ignore[attr-defined]
    return list(trail.export())


def by_request(client: TestClient, response) -> list[dict]:
    rid = response.headers["x-request-id"]
    return [e for e in events(client) if e["request_id"] == rid]


def test_every_route_is_audited_or_touches_no_biometric_data() -> None:
    assert app_routes() == set(ACTIONS) | UNAUDITED
    declared = audit_actions(create_app(Settings()).routes)
    assert {route: action for route, action in declared.items() if action} == ACTIONS
    assert {route for route, action in declared.items() if action is None} == UNAUDITED


def test_a_route_that_declares_nothing_is_refused() -> None:
    """A new route cannot be left unclassified: the app refuses to be made."""
    app = create_app(Settings())
    assert undeclared(app.routes) == []

    @app.get("/new")
    def new() -> dict:
        return {}

    assert undeclared(app.routes) == ["GET /new"]

    @app.get("/newer")
    @not_audited("a test route")
    def newer() -> dict:
        return {}

    assert undeclared(app.routes) == ["GET /new"]


def test_each_request_has_one_event_with_its_outcome(fake_client: TestClient) -> None:
    c = fake_client
    ann, bob = fake_image(face(1)), fake_image(face(2))
    enrolled = c.post("/enroll", data={"subject_id": "ann"}, files={"image": ann})
    assert enrolled.status_code == 201
    c.post("/enroll", data={"subject_id": "bob"}, files={"image": bob})
    match = c.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
    no_match = c.post("/verify", data={"subject_id": "ann"}, files={"image": bob})
    unknown = c.post("/verify", data={"subject_id": "zed"}, files={"image": ann})
    identify = c.post("/identify", files={"image": bob})
    compare = c.post("/compare", files={"image_a": ann, "image_b": ann})
    detect = c.post("/detect", files={"image": ann})
    listed = c.get("/subjects")
    read = c.get("/subjects/ann")
    exported = c.get("/subjects/ann/export")
    face_id = enrolled.json()["faces"][0]["face_id"]
    face_deleted = c.delete(f"/subjects/ann/faces/{face_id}")
    deleted = c.delete("/subjects/ann")
    key = c.post("/keys", json={"name": "door", "scopes": ["verify"]})
    revoked = c.delete(f"/keys/{key.json()['key_id']}")
    made = c.post("/collections", json={"collection_id": "lobby"})
    patched = c.patch("/collections/lobby", json={"retention_days": 30})
    dropped = c.delete("/collections/lobby")
    audit = c.get("/audit")
    expected = [
        (enrolled, "enroll", 201, None, ["ann"]),
        (match, "verify", 200, None, ["ann"]),
        (no_match, "verify", 200, None, ["ann"]),
        (unknown, "verify", 404, "subject_not_found", ["zed"]),
        (identify, "identify", 200, None, ["bob"]),
        (compare, "compare", 200, None, []),
        (detect, "detect", 200, None, []),
        (listed, "list_subjects", 200, None, ["ann", "bob"]),
        (read, "read_subject", 200, None, ["ann"]),
        (exported, "export_subject", 200, None, ["ann"]),
        (face_deleted, "delete_face", 200, None, ["ann"]),
        (deleted, "delete_subject", 200, None, ["ann"]),
        (key, "create_key", 201, None, []),
        (revoked, "revoke_key", 200, None, []),
        (made, "create_collection", 201, None, []),
        (patched, "update_collection", 200, None, []),
        (dropped, "delete_collection", 200, None, []),
        (audit, "read_audit", 200, None, []),
    ]
    for response, action, status, code, subjects in expected:
        assert response.status_code == status, (action, response.text)
        found = by_request(c, response)
        assert len(found) == 1, (action, found)
        event = found[0]
        assert (event["action"], event["status"], event["code"]) == (action, status, code)
        assert event["subjects"][: len(subjects)] == subjects, (action, event)
        assert event["key_id"] and event["client"] == "testclient"
    assert by_request(c, match)[0]["match"] is True
    assert by_request(c, no_match)[0]["match"] is False
    assert by_request(c, match)[0]["score"] == match.json()["score"]
    assert by_request(c, identify)[0]["subjects"][0] == "bob"
    assert by_request(c, made)[0]["collection"] == "lobby"
    # Never a key, an image or an embedding: the new key's text is nowhere in the trail.
    raw = str(events(c))
    assert key.json()["key"] not in raw and TEST_KEY not in raw
    assert "'embedding'" not in raw
    details = [v for e in events(c) for v in (e["detail"] or {}).values()]
    assert not any(isinstance(v, list) and len(v) >= 128 for v in details)


def test_health_and_unauthenticated_requests_record_nothing(fake_client: TestClient) -> None:
    before = len(events(fake_client))
    fake_client.get("/healthz")
    fake_client.get("/info")
    r = fake_client.post(
        "/verify", headers={"X-API-Key": "wrong"}, data={"subject_id": "a"}, files={"image": b""}
    )
    assert r.status_code == 401
    assert len(events(fake_client)) == before


def test_a_request_whose_event_cannot_be_written_is_not_answered(
    fake_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = fake_image(face(1))
    fake_client.post("/enroll", data={"subject_id": "ann"}, files={"image": ann})
    trail: AuditTrail = fake_client.app.state.audit  # type: ignore[attr-defined]

    def broken(rows: list[dict]) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(trail, "_write_batch", broken)
    r = fake_client.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
    body = assert_problem(r, 503, "audit_unavailable")
    assert "match" not in body and r.headers["retry-after"] == "5"
    monkeypatch.undo()
    # A write whose event cannot go in with it stores nothing.
    with trail.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    try:
        r = fake_client.post("/enroll", data={"subject_id": "bob"}, files={"image": ann})
        assert_problem(r, 503, "audit_unavailable")
    finally:
        with trail.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
    assert_problem(fake_client.get("/subjects/bob"), 404, "subject_not_found")


# ---- the chain ---------------------------------------------------------------------------
@pytest.fixture
def trail(tmp_path: Path) -> AuditTrail:
    store = Gallery.open(f"sqlite:///{tmp_path / 'a.db'}")
    trail = AuditTrail(store.database)
    trail.write(
        [
            AuditDraft("verify", request_id=f"r{i}", subjects=[f"s{i}"]).row(200, None)
            for i in range(6)
        ]
    )
    assert trail.seal() == 6
    return trail


def run(trail: AuditTrail, sql: str) -> None:
    with trail.engine.begin() as conn:
        conn.execute(text(sql))


def test_the_chain_verifies_and_names_a_changed_event(trail: AuditTrail) -> None:
    assert trail.verify().ok and trail.verify().events == 6
    run(trail, "UPDATE audit_events SET status = 404 WHERE id = 3")
    verdict = trail.verify()
    assert not verdict.ok and verdict.event_id == 3 and "changed" in (verdict.problem or "")


def test_the_chain_names_a_removed_event(trail: AuditTrail) -> None:
    run(trail, "DELETE FROM audit_events WHERE id = 4")
    verdict = trail.verify()
    assert not verdict.ok and "positions 4..4 were removed" in (verdict.problem or "")


def test_the_chain_names_a_reordering(trail: AuditTrail) -> None:
    run(trail, "UPDATE audit_events SET position = -1 WHERE id = 2")
    run(trail, "UPDATE audit_events SET position = 2 WHERE id = 5")
    run(trail, "UPDATE audit_events SET position = 5 WHERE id = 2")
    verdict = trail.verify()
    assert not verdict.ok and verdict.position == 2 and verdict.event_id == 5


def test_the_chain_names_events_removed_from_its_end(trail: AuditTrail) -> None:
    run(trail, "DELETE FROM audit_events WHERE id >= 5")
    verdict = trail.verify()
    assert not verdict.ok and "after position 4 were removed" in (verdict.problem or "")


def test_a_rewritten_chain_fails_against_a_recorded_head(trail: AuditTrail) -> None:
    head = trail.verify()
    pinned = (head.last_position, head.head_chain)
    # Someone rewrites an event and recomputes every link after it: only a head kept
    # outside the database shows it.
    run(trail, "UPDATE audit_events SET status = 500, position = NULL, chain = NULL WHERE id >= 3")
    run(
        trail,
        "UPDATE audit_head SET position = 2, chain = (SELECT chain FROM audit_events WHERE id = 2)",
    )
    assert trail.seal() == 4
    assert trail.verify().ok
    assert not trail.verify(expect=pinned).ok


def test_pruning_keeps_the_chain_verifiable_and_is_an_event(trail: AuditTrail) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    run(trail, f"UPDATE audit_events SET at = '{old:%Y-%m-%d %H:%M:%S.%f}' WHERE id <= 4")
    # The edit itself breaks the chain: re-seal from scratch, as if written then.
    run(trail, "UPDATE audit_events SET position = NULL, chain = NULL")
    run(trail, f"UPDATE audit_head SET position = 0, chain = '{'0' * 64}'")
    trail.seal()
    assert trail.verify().ok
    removed = trail.prune(before=datetime.now(UTC) - timedelta(days=30))
    assert removed == 4
    trail.seal()
    verdict = trail.verify()
    assert verdict.ok and verdict.first_position == 4 and verdict.events == 3
    prunes = [e for e in trail.export() if e["action"] == "audit_prune"]
    detail = prunes[0]["detail"]
    assert detail["through_position"] == 4 and detail["events"] == 4
    assert len(detail["through_chain"]) == 64 and detail["before"]
    # The anchor does not excuse a change after it.
    run(trail, "UPDATE audit_events SET code = 'x' WHERE id = 5")
    assert trail.verify().event_id == 5


def test_the_cli_verifies_exports_and_fails_on_a_change(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin")
    app = create_app(settings, builder=lambda s: (make_fake_service(s), {}))
    with TestClient(app, headers=AUTH) as client:
        ann = fake_image(face(1))
        client.post("/enroll", data={"subject_id": "ann"}, files={"image": ann})
        for _ in range(3):
            client.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    faceverify = str(Path(sys.executable).with_name("faceverify"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([faceverify, *args], env=env, capture_output=True, text=True)

    ok = cli("audit", "verify")
    assert ok.returncode == 0 and "ok: 4 events" in ok.stdout, ok.stdout + ok.stderr
    head = ok.stdout.split("head ")[1].split()[0]
    out = tmp_path / "audit.jsonl"
    assert cli("audit", "export", str(out)).returncode == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and '"action": "verify"' in lines[1]
    store = Gallery.connect(f"sqlite:///{tmp_path / 'faceverify.db'}")
    with store.database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET match = 0 WHERE id = 2"))
    bad = cli("audit", "verify", "--expect", head)
    assert bad.returncode == 1 and "event 2 at position 2 was changed" in bad.stdout
    # Commands that write record their events too.
    made = cli("keys", "create", "--scope", "verify", "--name", "door")
    assert made.returncode == 0, made.stderr
    exported = cli("audit", "export", "-").stdout
    assert '"action": "create_key"' in exported and '"request_id": "cli"' in exported
    assert made.stdout.split()[0] not in exported  # the key itself is not


def test_events_are_sealed_in_the_background(fake_client: TestClient) -> None:
    ann = fake_image(face(1))
    fake_client.post("/enroll", data={"subject_id": "ann"}, files={"image": ann})
    deadline = time.monotonic() + 10
    while any(e["position"] is None for e in events(fake_client)):
        assert time.monotonic() < deadline, "not sealed within 10 s"
        time.sleep(0.2)
    assert fake_client.app.state.audit.verify().ok  # type: ignore[attr-defined]


def test_audit_queries_filter_page_and_refuse_what_they_cannot_read(
    fake_client: TestClient,
) -> None:
    ann = fake_image(face(1))
    fake_client.post("/enroll", data={"subject_id": "ann"}, files={"image": ann})
    for _ in range(3):
        fake_client.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
    first = fake_client.get("/audit?action=verify&limit=2").json()
    assert [e["action"] for e in first["items"]] == ["verify", "verify"]
    rest = fake_client.get(f"/audit?action=verify&after={first['next_after']}").json()
    assert len(rest["items"]) == 1 and rest["next_after"] is None
    assert len(fake_client.get("/audit?subject=ann&action=enroll").json()["items"]) == 1
    # A time with an offset is the same instant in UTC: an hour ahead in +02:00 is an
    # hour ahead, not three.
    at = datetime.fromisoformat(first["items"][0]["at"].replace("Z", "+00:00"))
    ahead = (at + timedelta(hours=1)).astimezone(timezone(timedelta(hours=2)))
    r = fake_client.get("/audit", params={"action": "verify", "until": ahead.isoformat()})
    assert len(r.json()["items"]) == 3
    r = fake_client.get("/audit", params={"since": "0001-01-01T00:00:00+14:00"})
    assert r.status_code == 200
    for bad in ("after=99999999999999999999", "subject=%00", "key_id=a%20b", "action=DROP"):
        assert_problem(fake_client.get(f"/audit?{bad}"), 422, "validation_error")


def test_a_key_bound_to_a_collection_reads_only_its_collections_events(
    fake_client: TestClient,
) -> None:
    c = fake_client
    c.post("/collections", json={"collection_id": "door", "retention_days": 7})
    c.post("/collections", json={"collection_id": "lobby", "consent_required": True})
    door = c.post("/keys", json={"name": "door admin", "scopes": ["admin"], "collection": "door"})
    headers = {"X-API-Key": door.json()["key"]}
    ann = fake_image(face(1))
    r = c.post("/enroll?collection=lobby", data={"subject_id": "ann"}, files={"image": ann})
    assert_problem(r, 422, "consent_required")  # refused, and audited in lobby
    r = c.post("/enroll", data={"subject_id": "bob"}, files={"image": ann}, headers=headers)
    assert r.status_code == 201
    seen = c.get("/audit", headers=headers).json()["items"]
    assert {e["collection"] for e in seen} == {"door"}
    assert [e["subjects"] for e in seen if e["action"] == "enroll"] == [["bob"]]
    assert_problem(c.get("/audit?collection=lobby", headers=headers), 403, "forbidden")
    assert c.get("/audit?subject=ann", headers=headers).json()["items"] == []
    assert_problem(
        c.get("/subjects/ann/export?collection=lobby", headers=headers), 403, "forbidden"
    )
    privacy = c.get("/info", headers=headers).json()["privacy"]
    assert list(privacy["schedules"]) == ["door"]
    # The admin key of every collection sees both schedules, and every event.
    assert set(c.get("/info").json()["privacy"]["schedules"]) == {"door", "lobby"}
    assert {"door", "lobby"} <= {e["collection"] for e in c.get("/audit").json()["items"]}


def test_reads_are_answered_and_audited_while_a_bulk_import_holds_sqlites_lock(
    fake_client: TestClient, tmp_path: Path
) -> None:
    """A `gallery import` holds SQLite's write lock for its whole transaction: read
    events wait in the spool file, the answers do not wait for the import, and the
    events reach the database (chained) once the lock is free."""
    import sqlite3

    ann = fake_image(face(1))
    fake_client.post("/enroll", data={"subject_id": "ann"}, files={"image": ann})
    importer = sqlite3.connect(tmp_path / "faceverify.db", timeout=30)
    importer.execute("BEGIN IMMEDIATE")  # the import's transaction
    try:
        started = time.monotonic()
        answers = [
            fake_client.post("/verify", data={"subject_id": "ann"}, files={"image": ann})
            for _ in range(5)
        ]
        assert all(r.status_code == 200 and r.json()["match"] for r in answers)
        assert time.monotonic() - started < 10  # not 5 x the 30 s busy timeout
        spooled = list(tmp_path.glob("audit-spool-*.jsonl"))
        assert spooled and all(r.headers["x-request-id"] in spooled[0].read_text() for r in answers)
    finally:
        importer.rollback()
        importer.close()
    deadline = time.monotonic() + 15
    while not all(by_request(fake_client, r) for r in answers):
        assert time.monotonic() < deadline, "the spooled events did not reach the database"
        time.sleep(0.2)
    assert [by_request(fake_client, r)[0]["match"] for r in answers] == [True] * 5
    trail: AuditTrail = fake_client.app.state.audit  # type: ignore[attr-defined]
    trail.seal()
    assert trail.verify().ok
