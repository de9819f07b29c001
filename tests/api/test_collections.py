"""Collections: separate galleries with their own keys (issue 11). An isolation matrix
over every subject route and three kinds of key, collection management, per-collection
search and counts."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.api.app import create_app
from app.api.observability import bounded_labels
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import TEST_KEY, assert_problem, b64
from tests.helpers import fake_service as _fake_service

DOOR_KEY = "door-admin-key-0123456789"  # admin scope, bound to "door"
LOBBY_KEY = "lobby-admin-key-0123456789"  # admin scope, bound to "lobby"
ADMIN = {"X-API-Key": TEST_KEY}  # admin for every collection
DOOR = {"X-API-Key": DOOR_KEY}
LOBBY = {"X-API-Key": LOBBY_KEY}
ALICE = fake_image(face(1))  # enrolled in door only
SAM_DOOR, SAM_LOBBY = fake_image(face(2)), fake_image(face(3))  # "sam" in both


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    keys = f"{TEST_KEY}:admin,{DOOR_KEY}:admin@door,{LOBBY_KEY}:admin@lobby"
    app = create_app(
        settings.model_copy(update={"api_keys": SecretStr(keys)}),
        builder=lambda s: (_fake_service(s), {}),
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        for who, subject, image in ((DOOR, "alice", ALICE), (DOOR, "sam", SAM_DOOR)):
            assert (
                c.post(
                    "/enroll", data={"subject_id": subject}, files={"image": image}, headers=who
                ).status_code
                == 201
            )
        r = c.post("/enroll", data={"subject_id": "sam"}, files={"image": SAM_LOBBY}, headers=LOBBY)
        assert r.status_code == 201
        yield c


def alice_face(c: TestClient) -> str:
    return c.get("/subjects/alice", headers=DOOR).json()["faces"][0]["face_id"]


# Each route, acting on door's "alice": (call, how to read "alice is visible" from a 2xx).
Op = Callable[[TestClient, dict[str, str], str], object]
OPS: dict[str, Op] = {
    "verify": lambda c, h, q: c.post(
        f"/verify{q}", data={"subject_id": "alice"}, files={"image": ALICE}, headers=h
    ),
    "enroll_add": lambda c, h, q: c.post(
        f"/enroll{q}",
        data={"subject_id": "alice", "add": "true"},
        files={"image": fake_image(face(1, noise=0.1))},
        headers=h,
    ),
    "get_subject": lambda c, h, q: c.get(f"/subjects/alice{q}", headers=h),
    "delete_face": lambda c, h, q: c.delete(f"/subjects/alice/faces/{alice_face(c)}{q}", headers=h),
    "delete_subject": lambda c, h, q: c.delete(f"/subjects/alice{q}", headers=h),
}
WHO = {
    "door key": (DOOR, ""),
    "lobby key": (LOBBY, ""),
    "admin, no collection": (ADMIN, ""),
    "admin, collection=door": (ADMIN, "?collection=door"),
}
SEES_DOOR = {"door key", "admin, collection=door"}


@pytest.mark.parametrize("who", list(WHO))
@pytest.mark.parametrize("op", list(OPS))
def test_a_subject_is_seen_only_through_its_own_collection(
    client: TestClient, op: str, who: str
) -> None:
    headers, query = WHO[who]
    r = OPS[op](client, headers, query)
    if who in SEES_DOOR:
        assert r.status_code in (200, 201), r.text
        return
    # Another collection's subject answers exactly as an id that exists nowhere.
    body = assert_problem(r, 404, "subject_not_found")
    missing = client.get(f"/subjects/nobody{query}", headers=headers)
    unknown = assert_problem(missing, 404, "subject_not_found")
    assert body["detail"].replace("alice", "X") == unknown["detail"].replace("nobody", "X")
    assert set(body) - {"instance"} == set(unknown) - {"instance"}
    # And nothing was changed in door.
    assert client.get("/subjects/alice", headers=DOOR).json()["face_count"] == 1


@pytest.mark.parametrize("who", list(WHO))
def test_listing_and_identify_see_one_collection(client: TestClient, who: str) -> None:
    headers, query = WHO[who]
    listed = {
        s["subject_id"] for s in client.get(f"/subjects{query}", headers=headers).json()["items"]
    }
    found = client.post(f"/identify{query}", files={"image": ALICE}, headers=headers).json()
    candidates = {c["subject_id"] for c in found["candidates"]}
    if who in SEES_DOOR:
        assert listed == {"alice", "sam"} and found["best"]["subject_id"] == "alice"
        assert found["gallery_size"] == 2
    else:
        assert "alice" not in listed and "alice" not in candidates and found["best"] is None
        assert found["gallery_size"] == (1 if who == "lobby key" else 0)


def test_one_subject_id_in_two_collections_is_two_people(client: TestClient) -> None:
    sam = {"subject_id": "sam"}
    assert client.post("/verify", data=sam, files={"image": SAM_DOOR}, headers=DOOR).json()["match"]
    assert client.post("/verify", data=sam, files={"image": SAM_LOBBY}, headers=LOBBY).json()[
        "match"
    ]
    assert not client.post("/verify", data=sam, files={"image": SAM_DOOR}, headers=LOBBY).json()[
        "match"
    ]
    # JSON bodies may name the collection too (admin keys of every collection).
    r = client.post(
        "/verify",
        json={"subject_id": "sam", "collection": "lobby", "image": b64(SAM_LOBBY)},
        headers=ADMIN,
    )
    assert r.json()["match"]


def test_a_bound_key_cannot_name_another_collection(client: TestClient) -> None:
    for r in (
        client.post(
            "/verify?collection=lobby",
            data={"subject_id": "sam"},
            files={"image": SAM_LOBBY},
            headers=DOOR,
        ),
        client.post(
            "/compare",
            data={"collection": "lobby"},
            files={"image_a": ALICE, "image_b": ALICE},
            headers=DOOR,
        ),
        client.get("/subjects?collection=lobby", headers=DOOR),
    ):
        assert_problem(r, 403, "forbidden")
    r = client.post("/compare", files={"image_a": ALICE, "image_b": ALICE}, headers=DOOR)
    assert r.status_code == 200 and r.json()["match"]
    r = client.post(
        "/verify?collection=door",
        data={"subject_id": "sam", "collection": "lobby"},
        files={"image": SAM_LOBBY},
        headers=ADMIN,
    )
    assert_problem(r, 422, "validation_error")  # query and body disagree


def test_collections_are_managed_by_admin_keys_of_every_collection(client: TestClient) -> None:
    listed = {c["collection_id"]: c for c in client.get("/collections", headers=ADMIN).json()}
    assert set(listed) == {"default", "door", "lobby"}
    assert (listed["door"]["subjects"], listed["door"]["faces"]) == (2, 2)
    created = client.post("/collections", json={"collection_id": "kiosk"}, headers=ADMIN)
    assert created.status_code == 201 and created.json()["faces"] == 0
    assert_problem(
        client.post("/collections", json={"collection_id": "kiosk"}, headers=ADMIN),
        409,
        "collection_exists",
    )
    assert_problem(
        client.post("/collections", json={"collection_id": "a/b"}, headers=ADMIN),
        422,
        "validation_error",
    )
    assert_problem(client.get("/collections/nope", headers=ADMIN), 404, "collection_not_found")
    assert_problem(
        client.delete("/collections/default", headers=ADMIN), 409, "collection_protected"
    )
    r = client.post(
        "/verify?collection=nope", data={"subject_id": "x"}, files={"image": ALICE}, headers=ADMIN
    )
    assert_problem(r, 404, "collection_not_found")
    # A key bound to a collection, even an admin one, manages nothing outside it.
    for r in (
        client.get("/collections", headers=DOOR),
        client.post("/collections", json={"collection_id": "x"}, headers=DOOR),
        client.delete("/collections/lobby", headers=DOOR),
        client.get("/keys", headers=DOOR),
        client.post("/keys", json={"name": "x", "scopes": ["admin"]}, headers=DOOR),
        client.get("/metrics", headers=DOOR),
    ):
        assert_problem(r, 403, "forbidden")


def test_keys_are_made_for_a_collection_and_revoked_with_it(client: TestClient) -> None:
    made = client.post(
        "/keys",
        json={"name": "kiosk", "scopes": ["enroll", "verify"], "collection": "kiosk"},
        headers=ADMIN,
    )
    assert made.status_code == 201 and made.json()["collection"] == "kiosk"
    kiosk = {"X-API-Key": made.json()["key"]}
    assert client.get("/collections/kiosk", headers=ADMIN).status_code == 200  # made with it
    assert (
        client.post(
            "/enroll", data={"subject_id": "alice"}, files={"image": ALICE}, headers=kiosk
        ).status_code
        == 201
    )
    assert client.get("/info", headers=kiosk).json()["access"] == {
        "scopes": ["enroll", "verify"],
        "collection": "kiosk",
    }
    plain = client.post("/keys", json={"name": "p", "scopes": ["verify"]}, headers=ADMIN).json()
    assert plain["collection"] == "default"  # only admin keys may be unbound
    gone = client.delete("/collections/kiosk", headers=ADMIN)
    assert gone.status_code == 200 and (gone.json()["subjects"], gone.json()["faces"]) == (1, 1)
    assert_problem(
        client.post("/verify", data={"subject_id": "alice"}, files={"image": ALICE}, headers=kiosk),
        401,
        "unauthorized",
    )
    # A new collection of the same name does not bring the old key back.
    client.post("/collections", json={"collection_id": "kiosk"}, headers=ADMIN)
    assert_problem(client.get("/info", headers=kiosk), 401, "unauthorized")
    # Door is untouched.
    assert client.post(
        "/verify", data={"subject_id": "alice"}, files={"image": ALICE}, headers=DOOR
    ).json()["match"]


def test_counts_per_collection_in_info_and_metrics(client: TestClient) -> None:
    door = client.get("/info", headers=DOOR).json()
    assert door["gallery"] == {"faces": 2, "subjects": 2, "collections": {"door": 2}}
    admin = client.get("/info", headers=ADMIN).json()
    assert admin["gallery"]["collections"] == {"door": 2, "lobby": 1}
    assert admin["gallery"]["faces"] == 3 and admin["access"]["collection"] is None
    metrics = client.get("/metrics", headers=ADMIN).text
    assert 'faceverify_collection_faces{collection="door"} 2.0' in metrics
    assert 'faceverify_collection_faces{collection="lobby"} 1.0' in metrics


def test_metric_labels_stay_bounded() -> None:
    counts = {f"c{i:02d}": i for i in range(30)}
    labels = bounded_labels(counts, 20)
    assert (
        len(labels) == 21 and labels[0] == ("c29", 29) and labels[-1] == ("_other", sum(range(10)))
    )
    assert bounded_labels({"a": 1}, 20) == [("a", 1)]


def test_identify_by_a_stored_face(client: TestClient) -> None:
    """Search with an enrolled face instead of a photo (AWS SearchFaces): the face itself
    is left out, the subject's other faces still find it; only in the key's collection."""
    more = fake_image(face(1, noise=0.1))
    r = client.post(
        "/enroll", data={"subject_id": "alice", "add": "true"}, files={"image": more}, headers=DOOR
    )
    assert r.status_code == 201
    first = alice_face(client)
    found = client.post("/identify", data={"face_id": first}, headers=DOOR).json()
    assert found["probe"] is None and found["best"]["subject_id"] == "alice"
    assert found["best"]["face_id"] != first and 0 < found["best"]["distance"] < 0.6
    sam = client.get("/subjects/sam", headers=LOBBY).json()["faces"][0]["face_id"]
    assert client.post("/identify", data={"face_id": sam}, headers=LOBBY).json()["candidates"] == []
    # Another collection's face is unknown here, exactly like a made-up id.
    assert_problem(
        client.post("/identify", data={"face_id": first}, headers=LOBBY), 404, "face_not_found"
    )
    assert_problem(
        client.post("/identify", data={"face_id": "nope"}, headers=LOBBY), 404, "face_not_found"
    )
    both = client.post("/identify", data={"face_id": first}, files={"image": ALICE}, headers=DOOR)
    assert_problem(both, 422, "validation_error")


def test_an_environment_key_is_revoked_with_its_collection_for_good(settings: Settings) -> None:
    """Issue 25: a FACEVERIFY_API_KEYS key ...@lobby kept working after DELETE
    /collections/lobby answered keys_revoked, reached a new tenant's lobby once an admin
    made one, and a restart silently re-created the deleted collection."""
    keys = f"{TEST_KEY}:admin,{LOBBY_KEY}:admin@lobby"
    configured = settings.model_copy(update={"api_keys": SecretStr(keys)})

    def app() -> TestClient:
        return TestClient(
            create_app(configured, builder=lambda s: (_fake_service(s), {})),
            raise_server_exceptions=False,
        )

    with app() as c:
        assert c.get("/collections/lobby", headers=ADMIN).status_code == 200  # made for it
        r = c.post("/enroll", data={"subject_id": "sam"}, files={"image": SAM_LOBBY}, headers=LOBBY)
        assert r.status_code == 201
        gone = c.delete("/collections/lobby", headers=ADMIN)
        assert gone.status_code == 200 and gone.json()["keys_revoked"] is True
        assert_problem(c.get("/subjects", headers=LOBBY), 401, "unauthorized")
        assert_problem(c.get("/collections/lobby", headers=ADMIN), 404, "collection_not_found")
    with app() as c:  # a restart with the same environment
        assert_problem(c.get("/collections/lobby", headers=ADMIN), 404, "collection_not_found")
        assert_problem(c.get("/subjects", headers=LOBBY), 401, "unauthorized")
        # An admin makes "lobby" again for a new tenant: the old key does not reach it.
        assert c.post("/collections", json={"collection_id": "lobby"}, headers=ADMIN).status_code
        new = c.post(
            "/enroll?collection=lobby",
            data={"subject_id": "carol"},
            files={"image": ALICE},
            headers=ADMIN,
        )
        assert new.status_code == 201
        for r in (
            c.get("/subjects", headers=LOBBY),
            c.post("/identify", files={"image": ALICE}, headers=LOBBY),
        ):
            assert_problem(r, 401, "unauthorized")
    with app() as c:  # and after one more restart
        assert_problem(c.get("/subjects", headers=LOBBY), 401, "unauthorized")
        listed = c.get("/subjects?collection=lobby", headers=ADMIN).json()
        assert [s["subject_id"] for s in listed["items"]] == ["carol"]


def test_decision_rates_are_set_per_collection_and_only_tightened_per_request(
    client: TestClient,
) -> None:
    shown = client.get("/collections/door", headers=ADMIN).json()
    assert shown["identify_fpir"] == 0.01 and shown["verify_max_fmr"] is None  # defaults
    made = client.post(
        "/collections",
        json={"collection_id": "vault", "identify_fpir": 0.001, "verify_max_fmr": 1e-4},
        headers=ADMIN,
    )
    assert made.status_code == 201 and made.json()["identify_fpir"] == 0.001
    changed = client.patch("/collections/door", json={"identify_fpir": 0.002}, headers=ADMIN)
    assert changed.status_code == 200 and changed.json()["identify_fpir"] == 0.002
    for bad in ({"identify_fpir": 0.9}, {"identify_fpir": 0}, {"verify_max_fmr": 0.5}):
        assert_problem(
            client.patch("/collections/door", json=bad, headers=ADMIN), 422, "validation_error"
        )
    probe = {"image": ALICE}
    found = client.post("/identify?collection=door", files=probe, headers=ADMIN).json()
    assert found["open_set"]["fpir"] == 0.002 and found["best"]["subject_id"] == "alice"
    stricter = client.post(
        "/identify?collection=door", files=probe, data={"fpir": "0.001"}, headers=ADMIN
    )
    assert stricter.status_code == 200 and stricter.json()["open_set"]["fpir"] == 0.001
    looser = client.post(
        "/identify?collection=door", files=probe, data={"fpir": "0.01"}, headers=ADMIN
    )
    body = assert_problem(looser, 422, "rate_not_stricter")
    assert body["field"] == "fpir" and body["requested"] == 0.01 and body["allowed"] == 0.002
    client.patch("/collections/door", json={"verify_max_fmr": 1e-3}, headers=ADMIN)
    verify = {"subject_id": "alice"}
    held = client.post("/verify?collection=door", files=probe, data=verify, headers=ADMIN)
    assert held.status_code == 200 and held.json()["max_fmr"] == 1e-3
    loose = client.post(
        "/verify?collection=door", files=probe, data={**verify, "max_fmr": "0.01"}, headers=ADMIN
    )
    assert_problem(loose, 422, "rate_not_stricter")
    reset = client.patch("/collections/door", json={"identify_fpir": None}, headers=ADMIN)
    assert reset.json()["identify_fpir"] == 0.01  # back to the server's default
