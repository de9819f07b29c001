"""Retention, consent and subject access (issue 27), on a fake clock: a subject past its
expiry or its collection's schedule never matches, the purge deletes it with an audit
event, consent is required where the collection says so, and the export holds
everything about a person."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import AUTH, TEST_KEY, assert_problem, parts
from tests.helpers import fake_service as make_fake_service

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def clocked(client: TestClient) -> Clock:
    clock = Clock()
    parts(client.app.state.service).retention.clock = clock  # type: ignore[attr-defined]
    return clock


def enroll(client: TestClient, subject_id: str, seed: int, **fields: str):
    return client.post(
        "/enroll",
        data={"subject_id": subject_id, **fields},
        files={"image": fake_image(face(seed))},
    )


def verify(client: TestClient, subject_id: str, seed: int):
    return client.post(
        "/verify", data={"subject_id": subject_id}, files={"image": fake_image(face(seed))}
    )


def identified(client: TestClient, seed: int) -> list[str]:
    r = client.post("/identify", files={"image": fake_image(face(seed))}, data={"top_k": "5"})
    return [c["subject_id"] for c in r.json()["candidates"]]


def events_of(client: TestClient, action: str) -> list[dict]:
    return [e for e in client.app.state.audit.export() if e["action"] == action]  # type: ignore[attr-defined]


def test_an_expired_subject_never_matches_and_the_purge_deletes_it(
    fake_client: TestClient,
) -> None:
    clock = clocked(fake_client)
    expires = clock.now + timedelta(days=1)
    r = enroll(fake_client, "ann", 1, expires_at=expires.isoformat())
    assert r.status_code == 201 and r.json()["subject"]["expires_at"].startswith(
        expires.strftime("%Y-%m-%dT%H:%M")
    )
    enroll(fake_client, "bob", 2)
    assert verify(fake_client, "ann", 1).json()["match"] is True
    assert "ann" in identified(fake_client, 1)
    clock.now += timedelta(days=2)
    body = assert_problem(verify(fake_client, "ann", 1), 404, "subject_expired")
    assert body["due_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M"))
    assert identified(fake_client, 1) == ["bob"]  # left out before the purge ran
    r = fake_client.post(
        "/enroll",
        data={"subject_id": "ann", "add": "true"},
        files={"image": fake_image(face(1))},
    )
    assert_problem(r, 404, "subject_expired")
    service = fake_client.app.state.service  # type: ignore[attr-defined]
    assert parts(service).retention.purge() == 1
    assert_problem(fake_client.get("/subjects/ann"), 404, "subject_not_found")
    assert verify(fake_client, "bob", 2).json()["match"] is True
    purged = events_of(fake_client, "retention_purge")
    assert [(e["subjects"], e["status"], e["detail"]["faces_deleted"]) for e in purged] == [
        (["ann"], 200, 1)
    ]
    assert fake_client.app.state.audit.verify().ok  # type: ignore[attr-defined]


def test_an_expiry_with_an_offset_is_the_same_instant(fake_client: TestClient) -> None:
    clock = clocked(fake_client)
    # 10:00 at +02:00 is 08:00 UTC: due then, not two hours later.
    local = (clock.now + timedelta(days=1)).astimezone(timezone(timedelta(hours=2)))
    r = enroll(fake_client, "ann", 1, expires_at=local.isoformat())
    assert r.status_code == 201
    assert r.json()["subject"]["expires_at"].startswith(
        local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    )
    clock.now += timedelta(days=1, minutes=1)
    assert_problem(verify(fake_client, "ann", 1), 404, "subject_expired")
    far = enroll(fake_client, "bob", 2, expires_at="0001-01-01T00:00:00+14:00")
    assert_problem(far, 422, "validation_error")


def test_an_expiry_in_the_past_is_refused(fake_client: TestClient) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert_problem(enroll(fake_client, "ann", 1, expires_at=past), 422, "validation_error")


def test_a_collection_schedule_counts_from_the_last_successful_verify(
    fake_client: TestClient,
) -> None:
    clock = clocked(fake_client)
    r = fake_client.patch("/collections/default", json={"retention_days": 30})
    assert r.status_code == 200 and r.json()["retention_days"] == 30
    assert fake_client.get("/collections/default").json()["retention_days"] == 30
    privacy = fake_client.get("/info").json()["privacy"]
    assert privacy["schedules"]["default"]["retention_days"] == 30 and privacy["audit_trail"]
    enroll(fake_client, "ann", 1)
    enroll(fake_client, "bob", 2)
    clock.now += timedelta(days=20)
    assert verify(fake_client, "ann", 1).json()["match"] is True  # ann's clock restarts
    assert verify(fake_client, "ann", 2).json()["match"] is False  # a failed one does not
    clock.now += timedelta(days=11)  # day 31: bob is due, ann has 19 days left
    assert identified(fake_client, 2) == ["ann"] or "bob" not in identified(fake_client, 2)
    assert_problem(verify(fake_client, "bob", 2), 404, "subject_expired")
    assert parts(fake_client.app.state.service).retention.purge() == 1  # type: ignore[attr-defined]
    assert fake_client.get("/subjects/bob").status_code == 404
    assert verify(fake_client, "ann", 1).json()["match"] is True
    clock.now += timedelta(days=31)
    assert_problem(verify(fake_client, "ann", 1), 404, "subject_expired")
    r = fake_client.patch("/collections/default", json={"retention_days": None})
    assert r.json()["retention_days"] is None
    assert verify(fake_client, "ann", 1).json()["match"] is True  # no schedule: kept


def test_the_purge_command_lists_then_deletes_what_is_due(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin")
    app = create_app(settings, builder=lambda s: (make_fake_service(s), {}))
    with TestClient(app, headers=AUTH) as client:
        soon = (datetime.now(UTC) + timedelta(days=3)).isoformat()
        enroll(client, "ann", 1, expires_at=soon)
        enroll(client, "bob", 2)
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    faceverify = str(Path(sys.executable).with_name("faceverify"))
    later = (datetime.now(UTC) + timedelta(days=4)).isoformat()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([faceverify, *args], env=env, capture_output=True, text=True)

    assert "0 subjects due" in cli("purge", "--dry-run").stdout
    listed = cli("purge", "--dry-run", "--now", later)
    assert listed.stdout.splitlines() == ["default\tann", "1 subjects due"], listed.stderr
    done = cli("purge", "--now", later)
    assert done.returncode == 0 and "purged 1 subjects" in done.stdout
    exported = cli("audit", "export", "-")
    purges = [json.loads(x) for x in exported.stdout.splitlines() if "retention_purge" in x]
    assert [(e["subjects"], e["request_id"]) for e in purges] == [(["ann"], "cli")]
    shown = cli("collections", "schedule", "default", "--retention-days", "7")
    assert "retention 7 days after last use" in shown.stdout


def test_a_collection_that_requires_consent_refuses_enrollment_without_it(
    fake_client: TestClient,
) -> None:
    r = fake_client.post("/collections", json={"collection_id": "door", "consent_required": True})
    assert r.status_code == 201 and r.json()["consent_required"] is True
    body = assert_problem(enroll(fake_client, "ann", 1, collection="door"), 422, "consent_required")
    assert body["collection"] == "door"
    consent = {"reference": "form-v3/8812", "given_at": "2026-12-01T10:00:00Z"}
    r = enroll(fake_client, "ann", 1, collection="door", consent=json.dumps(consent))
    assert r.status_code == 201, r.text
    assert r.json()["subject"]["consent"] == {
        "reference": "form-v3/8812",
        "given_at": "2026-12-01T10:00:00+00:00",
    }
    # Faces added later need none: the subject has it.
    r = enroll(fake_client, "ann", 1, collection="door", add="true")
    assert r.status_code == 201
    # JSON bodies too; a malformed consent is a validation error.
    bad = fake_client.post(
        "/enroll?collection=door",
        json={"subject_id": "bob", "image": "", "consent": {"reference": ""}},
    )
    assert_problem(bad, 422, "validation_error")
    assert enroll(fake_client, "cy", 3).status_code == 201  # default: no consent rule


def test_the_subject_export_holds_everything_about_them(fake_client: TestClient) -> None:
    consent = {"reference": "doc-1", "given_at": "2026-11-30T08:00:00Z"}
    r = fake_client.post(
        "/enroll",
        data={
            "subject_id": "ann",
            "name": "Ann",
            "metadata": '{"team": "blue"}',
            "consent": json.dumps(consent),
        },
        files=[("image", fake_image(face(1))), ("image", fake_image(face(1, noise=0.1)))],
    )
    assert r.status_code == 201
    verify(fake_client, "ann", 1)
    plain = fake_client.get("/subjects/ann/export").json()
    assert plain["subject"]["name"] == "Ann" and plain["subject"]["metadata"] == {"team": "blue"}
    assert plain["subject"]["consent"]["reference"] == "doc-1"
    assert len(plain["faces"]) == 2 and all(f["embedding"] is None for f in plain["faces"])
    assert [e["action"] for e in plain["audit_events"]] == ["enroll", "verify"]
    assert plain["collection"]["collection_id"] == "default" and plain["due_at"] is None
    full = fake_client.get("/subjects/ann/export?include_embeddings=true").json()
    store = parts(fake_client.app.state.service).gallery  # type: ignore[attr-defined]
    stored = store.subjects.face_bytes(collection="default", subject_id="ann")
    for f in full["faces"]:
        assert len(f["embedding"]) == 128
        assert np.array_equal(
            np.asarray(f["embedding"], dtype="<f4").tobytes(), stored[f["face_id"]]
        )
    # The export itself is audited, and appears in the next one.
    again = fake_client.get("/subjects/ann/export").json()
    assert [e["action"] for e in again["audit_events"]][-2:] == ["export_subject", "export_subject"]
    assert_problem(fake_client.get("/subjects/zed/export"), 404, "subject_not_found")


def test_the_background_round_purges_and_prunes_the_audit_trail(tmp_path: Path) -> None:
    from app.service.upkeep import Upkeep

    settings = Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin", audit_retention_days=1)
    app = create_app(settings, builder=lambda s: (make_fake_service(s), {}))
    with TestClient(app, headers=AUTH) as client:
        clock = clocked(client)
        enroll(client, "ann", 1, expires_at=(clock.now + timedelta(hours=1)).isoformat())
        enroll(client, "bob", 2)
        verify(client, "bob", 2)
        service = client.app.state.service  # type: ignore[attr-defined]
        upkeep = Upkeep(
            settings, parts(service).gallery, parts(service).retention, parts(service).audit
        )
        assert upkeep.round() == (0, 0)  # nothing due, nothing old
        clock.now += timedelta(days=2)
        purged, pruned = upkeep.round()
        # ann; and every event so far, the purge's too (they carry the wall clock's time,
        # two days before the fake one)
        assert purged == 1 and pruned == 4
        trail = parts(service).audit
        trail.seal()
        assert trail.verify().ok
        assert [e["action"] for e in trail.export()] == ["audit_prune"]
