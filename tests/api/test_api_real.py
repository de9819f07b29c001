"""End to end over HTTP with the real models: every endpoint at least once."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from tests.helpers import assert_problem, data

pytestmark = pytest.mark.model


def enroll(client: TestClient, subject_id: str, *names: str, **fields: str):
    return client.post(
        "/enroll",
        data={"subject_id": subject_id, **fields},
        files=[("image", (n, data(n))) for n in names],
    )


def verify(client: TestClient, subject_id: str, name: str):
    return client.post(
        "/verify", data={"subject_id": subject_id}, files={"image": (name, data(name))}
    )


def test_enroll_obama_then_verify(real_client: TestClient) -> None:
    r = enroll(real_client, "obama", "obama.jpg", name="Barack Obama")
    assert r.status_code == 201, r.text
    assert r.json()["face_count"] == 1
    for name in ("obama2.jpg", "obama3.jpg", "32bit.png"):
        body = verify(real_client, "obama", name).json()
        assert body["match"] is True and body["distance"] < 0.6, (name, body)
        assert body["score"] > 50
    body = verify(real_client, "obama", "biden.jpg").json()
    assert body["match"] is False and body["distance"] > 0.6 and body["score"] < 50


def test_verify_by_json_base64_gives_the_same_distance(real_client: TestClient) -> None:
    enroll(real_client, "obama-json", "obama.jpg")
    multipart = verify(real_client, "obama-json", "obama2.jpg").json()
    as_json = real_client.post(
        "/verify",
        json={"subject_id": "obama-json", "image": base64.b64encode(data("obama2.jpg")).decode()},
    ).json()
    assert as_json["distance"] == multipart["distance"]


def test_two_people_refused_then_accepted_with_largest(real_client: TestClient) -> None:
    body = assert_problem(enroll(real_client, "pair", "two_people.jpg"), 422, "multiple_faces")
    assert len(body["boxes"]) == 2
    r = enroll(real_client, "pair", "two_people.jpg", face="largest")
    assert r.status_code == 201
    # The largest face in two_people.jpg is Joe Biden's.
    assert verify(real_client, "pair", "biden.jpg").json()["match"] is True


def test_bad_photos_get_their_codes(real_client: TestClient) -> None:
    assert_problem(enroll(real_client, "x", "coffee.png"), 422, "no_face")
    assert_problem(enroll(real_client, "x", "truncated_jpeg.jpg"), 400, "invalid_image")
    r = real_client.post(
        "/enroll", data={"subject_id": "x"}, files={"image": ("a.txt", b"just text")}
    )
    assert_problem(r, 415, "unsupported_media_type")
    # One bad photo among good ones stores nothing.
    r = real_client.post(
        "/enroll",
        data={"subject_id": "x"},
        files=[("image", data("obama.jpg")), ("image", data("coffee.png"))],
    )
    assert_problem(r, 422, "no_face")
    assert_problem(real_client.get("/subjects/x"), 404, "subject_not_found")


def test_identify_compare_and_delete(real_client: TestClient) -> None:
    # A collection of its own: this module enrolls Obama under other ids too, and the
    # open-set rule rightly names nobody when two subjects are both near the photo.
    assert real_client.post("/collections", json={"collection_id": "idc"}).status_code == 201
    enroll(real_client, "obama-id", "obama.jpg", collection="idc")
    enroll(real_client, "biden-id", "biden.jpg", collection="idc")
    r = real_client.post(
        "/identify", files={"image": data("obama2.jpg")}, data={"top_k": "10", "collection": "idc"}
    )
    body = r.json()
    assert r.status_code == 200 and body["best"]["subject_id"] == "obama-id"
    assert body["open_set"]["named"] and body["open_set"]["subjects"] == 2
    assert body["open_set"]["probability"] > 0.9 and body["open_set"]["fpir"] == 0.01
    assert "biden-id" in [c["subject_id"] for c in body["candidates"]]
    # Someone enrolled in neither: unknown, plainly.
    r = real_client.post(
        "/identify", files={"image": data("curie_upright.jpg")}, data={"collection": "idc"}
    )
    assert r.status_code == 200 and r.json()["best"] is None
    assert r.json()["open_set"]["named"] is False
    r = real_client.post(
        "/compare", files={"image_a": data("obama.jpg"), "image_b": data("obama3.jpg")}
    )
    assert r.status_code == 200 and r.json()["match"] is True
    r = real_client.post(
        "/compare", files={"image_a": data("obama.jpg"), "image_b": data("biden.jpg")}
    )
    assert r.json()["match"] is False
    assert real_client.delete("/subjects/biden-id?collection=idc").status_code == 200
    r = real_client.post(
        "/identify", files={"image": data("biden.jpg")}, data={"top_k": "100", "collection": "idc"}
    )
    assert "biden-id" not in [c["subject_id"] for c in r.json()["candidates"]]
    assert real_client.get("/readyz").status_code == 200
