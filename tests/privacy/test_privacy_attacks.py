"""Issue 37's attacks on consent, expiry, the trail's subject names, lifetimes, subject
ids, the command line's bounds and replays: each sequence that defeated a promise."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.errors import ConsentRequired, InvalidRequest, SubjectExpired
from app.gallery import Consent
from app.service.transfer import export_faces, import_faces
from app.settings import Settings
from tests.fakes import face, fake_image, unit_vector
from tests.helpers import AUTH, TEST_KEY, add_faces, assert_problem, parts
from tests.helpers import fake_service as make_fake_service
from tests.privacy.test_retention import clocked, enroll, events_of, verify

FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"FACEVERIFY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    return subprocess.run([FACEVERIFY, *args], env=env, capture_output=True, text=True)


def expire(tmp_path: Path, subject_id: str, collection: str = "default") -> None:
    """Make the subject past its expiry in the database itself (the store's clock is
    the real one)."""
    with sqlite3.connect(tmp_path / "faceverify.db") as conn:
        conn.execute(
            "UPDATE subjects SET expires_at = '2020-01-01 00:00:00.000000' "
            "WHERE id = ? AND collection_id = ?",
            (subject_id, collection),
        )


# ---- 5, 17: consent and expiry on the import and export paths --------------------------
def test_an_import_into_a_collection_that_requires_consent_needs_it(
    fake_client: TestClient, tmp_path: Path
) -> None:
    c = fake_client
    assert (
        c.post("/collections", json={"collection_id": "door", "consent_required": True}).status_code
        == 201
    )
    store = parts(c.app.state.service).gallery  # type: ignore[attr-defined]
    vectors = np.stack([unit_vector(1), unit_vector(2)])
    args = {
        "collection": "door",
        "subject_ids": ["ann", "bob"],
        "embeddings": vectors,
        "encoder": "fake",
        "pipeline_version": "import:x",
    }
    with pytest.raises(ConsentRequired):
        import_faces(store, **args)
    assert store.collections.get(collection="door").subjects == 0  # nothing stored
    future = Consent("form-v2", datetime.now(UTC) + timedelta(days=365))
    with pytest.raises(InvalidRequest, match="future"):
        import_faces(store, **args, consent=future)
    given = Consent("form-v2", datetime(2026, 12, 1, tzinfo=UTC))
    stored, created, _ = import_faces(store, **args, consent=given)
    assert (stored, created) == (2, 2)
    assert store.subjects.get(collection="door", subject_id="ann").consent == given.as_json()


def test_the_cli_import_refuses_without_consent_and_takes_it(tmp_path: Path) -> None:
    assert cli(tmp_path, "collections", "schedule", "default", "--consent-required").returncode == 0
    file = tmp_path / "g.jsonl"
    line = {"subject_id": "ann", "embedding": [float(v) for v in unit_vector(1)]}
    file.write_text(json.dumps(line) + "\n")
    refused = cli(tmp_path, "gallery", "import", str(file))
    assert refused.returncode != 0 and "consent" in refused.stderr.lower(), refused.stderr
    done = cli(
        tmp_path,
        "gallery",
        "import",
        str(file),
        "--consent-reference",
        "form-v2",
        "--consent-given-at",
        "2026-12-01T09:00:00Z",
    )
    assert done.returncode == 0 and "1 new subjects" in done.stdout, done.stderr


def test_an_import_adds_nothing_to_an_expired_subject_and_the_export_leaves_it_out(
    fake_client: TestClient, tmp_path: Path
) -> None:
    c = fake_client
    enroll(c, "ann", 1)
    enroll(c, "bob", 2)
    expire(tmp_path, "ann")
    store = parts(c.app.state.service).gallery  # type: ignore[attr-defined]
    with pytest.raises(SubjectExpired):
        import_faces(
            store,
            collection="default",
            subject_ids=["ann"],
            embeddings=unit_vector(3)[None],
            encoder="fake",
            pipeline_version="import:x",
        )
    assert store.subjects.get(collection="default", subject_id="ann").face_count == 1
    faces, _, _ = export_faces(store, collection="default")
    assert {f.subject_id for f in faces} == {"bob"}


# ---- 6, 8: the face_id probe and the trail's subject names ----------------------------
def test_identify_by_the_face_of_an_expired_subject_is_refused_and_names_it(
    fake_client: TestClient,
) -> None:
    c = fake_client
    clock = clocked(c)
    face_id = enroll(c, "victim", 1, expires_at=(clock.now + timedelta(days=1)).isoformat()).json()[
        "faces"
    ][0]["face_id"]
    enroll(c, "bob", 2)
    ok = c.post("/identify", data={"face_id": face_id})
    assert ok.status_code == 200
    seen = [
        e for e in events_of(c, "identify") if e["detail"] and e["detail"].get("face_id") == face_id
    ]
    assert seen and "victim" in seen[-1]["subjects"]  # the probe's owner is named
    clock.now += timedelta(days=2)
    assert_problem(c.post("/identify", data={"face_id": face_id}), 404, "subject_expired")
    refused = [e for e in events_of(c, "identify") if e["code"] == "subject_expired"]
    assert refused and refused[-1]["subjects"] == ["victim"]
    assert any(
        e["code"] == "subject_expired" for e in c.get("/audit?subject=victim").json()["items"]
    )


def test_the_trail_names_the_normalised_subject(fake_client: TestClient) -> None:
    c = fake_client
    enroll(c, "victim", 1)
    r = c.get("/subjects/ｖｉｃｔｉｍ/export?include_embeddings=true")
    assert r.status_code == 200
    exports = events_of(c, "export_subject")
    assert exports[-1]["subjects"] == ["victim"]
    actions = [e["action"] for e in c.get("/audit?subject=victim").json()["items"]]
    assert "export_subject" in actions
    assert "export_subject" in [
        e["action"] for e in c.get("/subjects/victim/export").json()["audit_events"]
    ]
    assert c.get("/audit?subject=ｖｉｃｔｉｍ").json()["items"]  # the filter reads it the same


# ---- 9, 18: lifetimes and what a bound key sees ---------------------------------------
def test_an_export_lists_the_current_lifetime_only(fake_client: TestClient) -> None:
    c = fake_client
    enroll(c, "reuse", 1)
    verify(c, "reuse", 1)
    assert c.delete("/subjects/reuse").status_code == 200
    enroll(c, "reuse", 2)
    events = c.get("/subjects/reuse/export").json()["audit_events"]
    assert [e["action"] for e in events] == ["enroll"], events


def test_a_bound_key_of_a_recreated_collection_sees_its_own_lifetime_and_no_global_ids(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, api_keys=f"{TEST_KEY}:admin")
    app = create_app(settings, builder=lambda s: (make_fake_service(s), {}))
    with TestClient(app, headers=AUTH) as c:
        c.post("/collections", json={"collection_id": "door"})
        enroll(c, "old-person", 1, collection="door")
        assert c.delete("/collections/door").status_code == 200
        c.post("/collections", json={"collection_id": "door"})
        key = c.post(
            "/keys", json={"name": "door", "scopes": ["admin"], "collection": "door"}
        ).json()["key"]
        enroll(c, "new-person", 2, collection="door")
        enroll(c, "other", 3)
        bound = {"X-API-Key": key}
        # (each page is itself an event in door: page through the enrollments)
        page = c.get("/audit?limit=1&action=enroll", headers=bound).json()
        seen = []
        while True:
            seen += page["items"]
            if page["next_after"] is None:
                break
            assert isinstance(page["next_after"], str) and len(page["next_after"]) == 32
            after = page["next_after"]
            page = c.get(f"/audit?limit=1&action=enroll&after={after}", headers=bound).json()
        subjects = {s for e in seen for s in e["subjects"]}
        assert "old-person" not in subjects and "new-person" in subjects
        assert all(e["id"] is None and e["position"] is None and e["chain"] is None for e in seen)
        assert_problem(c.get("/audit?after=3", headers=bound), 422, "validation_error")
        # An admin key of every collection still reads the whole trail, with ids.
        everything = c.get("/audit?limit=1000").json()["items"]
        assert "old-person" in {s for e in everything for s in e["subjects"]}
        assert all(isinstance(e["id"], int) for e in everything)


# ---- 10: every path that creates a subject applies the API's rules ---------------------
@pytest.mark.parametrize("name", ["x|obama", "ｏｂａｍａ", "obаma", "two words", "new\nline"])
def test_enroll_dir_refuses_folder_names_the_api_refuses(tmp_path: Path, name: str) -> None:
    from app.bulk import enroll_folder

    folder = tmp_path / "photos"
    (folder / name).mkdir(parents=True)
    (folder / name / "a.png").write_bytes(fake_image(face(1)))
    (folder / "obama").mkdir()
    (folder / "obama" / "a.png").write_bytes(fake_image(face(2)))
    service = make_fake_service(Settings(data_dir=tmp_path / "data"))
    outcomes = enroll_folder(service, folder, collection="default", workers=1)
    by = {o.subject_id: o for o in outcomes}
    assert by[name].status == "refused" and by[name].code == "invalid_subject_id"
    assert by["obama"].status == "enrolled"
    listed, _ = parts(service).gallery.subjects.page(collection="default", offset=0, limit=10)
    assert [s.id for s in listed] == ["obama"]
    service.close()


# ---- 12, 14: the CLI refuses what the API refuses; PATCH takes numbers only ------------
@pytest.mark.parametrize("days", ["0", "5000000", "-1", "٥"])
def test_the_cli_schedule_takes_the_apis_bounds(tmp_path: Path, days: str) -> None:
    done = cli(tmp_path, "collections", "schedule", "default", "--retention-days", days)
    assert done.returncode == 2, done.stdout
    shown = cli(tmp_path, "collections", "schedule", "default")
    assert "retention none" in shown.stdout


def test_audit_prune_refuses_a_negative_retention(tmp_path: Path) -> None:
    assert cli(tmp_path, "db", "upgrade").returncode == 0
    done = cli(tmp_path, "audit", "prune", "--days", "-1")
    assert done.returncode == 2


def test_patch_takes_a_number_of_days_not_true_or_text(fake_client: TestClient) -> None:
    c = fake_client
    for bad in (True, "5", 5.5, 0, 36_501):
        r = c.patch("/collections/default", json={"retention_days": bad})
        assert_problem(r, 422, "validation_error")
    assert_problem(
        c.patch("/collections/default", json={"consent_required": "yes"}), 422, "validation_error"
    )
    assert c.get("/collections/default").json()["retention_days"] is None
    assert c.patch("/collections/default", json={"retention_days": 5}).json()["retention_days"] == 5


# ---- 15: a replay with another expiry or consent is another request ---------------------
def test_an_idempotency_replay_with_a_changed_expiry_or_consent_is_refused(
    fake_client: TestClient,
) -> None:
    c = fake_client
    c.patch("/collections/default", json={"consent_required": True})

    def send(**fields: str):
        return c.post(
            "/enroll",
            data={"subject_id": "ann", **fields},
            files={"image": fake_image(face(1))},
            headers={"Idempotency-Key": "k1"},
        )

    consent = '{"reference": "v1", "given_at": "2026-12-01T00:00:00Z"}'
    assert send(consent=consent).status_code == 201
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    for changed in (
        {"consent": '{"reference": "v2", "given_at": "2026-12-01T00:00:00Z"}'},
        {"consent": consent, "expires_at": later},
    ):
        r = send(**changed)
        assert r.status_code == 422 and r.json()["code"] == "idempotency_key_reused", r.text
    assert send(consent=consent).headers.get("idempotent-replayed") == "true"


def test_a_retry_with_another_key_of_the_collection_stores_nothing_twice(
    fake_client: TestClient,
) -> None:
    c = fake_client
    other = c.post("/keys", json={"name": "second", "scopes": ["enroll"]}).json()["key"]
    image = {"image": fake_image(face(1))}
    first = c.post(
        "/enroll", data={"subject_id": "ann"}, files=image, headers={"Idempotency-Key": "k"}
    )
    again = c.post(
        "/enroll",
        data={"subject_id": "ann"},
        files=image,
        headers={"Idempotency-Key": "k", "X-API-Key": other},
    )
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json()["faces"] == first.json()["faces"]
    assert c.get("/subjects/ann").json()["face_count"] == 1


# ---- 16: due-ness decided where the write commits ---------------------------------------
def test_adding_to_a_subject_that_became_due_after_the_check_is_refused(
    fake_service, tmp_path: Path
) -> None:
    store = parts(fake_service).gallery
    fake_service.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    expire(tmp_path, "ann")  # between the service's check and the write
    from app.gallery import NewFace
    from app.geometry import Box

    with pytest.raises(SubjectExpired):
        add_faces(
            store,
            collection="default",
            subject_id="ann",
            faces=[NewFace(embedding=unit_vector(1), box=Box(0, 0, 9, 9), detector_score=1.0)],
            encoder="fake",
            pipeline_version="v",
            add=True,
            expires_at=datetime.now(UTC) + timedelta(days=365),
        )
    assert store.subjects.get(collection="default", subject_id="ann").face_count == 1


# ---- 18: consent dated in the future ---------------------------------------------------
def test_consent_given_in_the_future_is_refused(fake_client: TestClient) -> None:
    r = fake_client.post(
        "/enroll",
        data={
            "subject_id": "ann",
            "consent": '{"reference": "v1", "given_at": "2999-01-01T00:00:00Z"}',
        },
        files={"image": fake_image(face(1))},
    )
    assert_problem(r, 422, "validation_error")
