"""The client against a real server (issue 28): every method, sync and async, photos in
every form, errors as typed exceptions, and retries that never store twice."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx2
import numpy as np
import pytest
from conftest import DATA, KEY
from faceverify_client import AsyncClient, Client, errors, models
from PIL import Image

pytestmark = pytest.mark.model


def client(server: str, **kw: Any) -> Client:
    return Client(server, api_key=KEY, **kw)


def test_every_method_in_turn(server: str) -> None:
    with client(server) as fv:
        assert fv.health().status == "ok" and fv.ready().status == "ready"
        assert isinstance(fv.info(), models.InfoResponse)
        # Photos in every form: a path, bytes, a file object, a PIL image, an RGB array.
        photo = DATA / "obama.jpg"
        enrolled = fv.enroll("obama", photo, name="Barack Obama", metadata={"team": "44"})
        assert isinstance(enrolled, models.EnrollResponse) and enrolled.face_count == 1
        image = Image.open(DATA / "obama2.jpg")
        with (DATA / "obama2.jpg").open("rb") as file:
            for form in (
                photo.read_bytes(),
                file,
                image,
                np.asarray(image.convert("RGB")),
                str(DATA / "obama3.jpg"),
            ):
                result = fv.verify("obama", form)
                assert isinstance(result, models.VerifyResponse) and result.match, type(form)
        image.close()
        assert fv.verify("obama", DATA / "biden.jpg").match is False
        added = fv.enroll("obama", [DATA / "obama2.jpg"], add=True)
        assert added.face_count == 2
        who = fv.identify(DATA / "obama3.jpg")
        assert who.best is not None and who.best.subject_id == "obama"
        assert who.open_set is not None and who.open_set.named and who.open_set.fpir == 0.01
        stranger = fv.identify(DATA / "curie_upright.jpg", fpir=0.001)
        assert stranger.best is None and stranger.open_set is not None
        assert stranger.open_set.fpir == 0.001 and not stranger.open_set.named
        with pytest.raises(errors.RateNotStricter) as refused:
            fv.identify(DATA / "obama3.jpg", fpir=0.2)
        assert refused.value.allowed == 0.01 and refused.value.requested == 0.2
        by_face = fv.identify(face_id=enrolled.faces[0].face_id)
        assert by_face.candidates[0].subject_id == "obama"
        same = fv.compare(DATA / "obama.jpg", DATA / "obama2.jpg")
        assert same.match and same.probe_a.box.left >= 0
        found = fv.detect(DATA / "two_people.jpg")
        assert len(found.faces) == 2
        fv.enroll("biden", DATA / "biden.jpg")
        # The module's server is shared: another test's subjects may be listed too.
        assert {"biden", "obama"} <= {s.subject_id for s in fv.subjects(page=1)}
        detail = fv.get_subject("obama")
        assert detail.name == "Barack Obama" and len(detail.faces) == 2
        export = fv.export_subject("obama", include_embeddings=True)
        assert len(export.faces[0].embedding or []) == 128
        gone = fv.delete_face("obama", enrolled.faces[0].face_id)
        assert gone.face_count == 1
        assert fv.delete_subject("biden").faces_deleted == 1
        made = fv.create_collection("door", retention_days=30)
        assert made.retention_days == 30
        assert fv.update_collection("door", {"consent_required": True}).consent_required
        assert "door" in [c.collection_id for c in fv.collections()]
        key = fv.create_key("kiosk", ["verify"], collection="door")
        assert key.key.startswith("fv_") and key.collection == "door"
        assert key.key_id in [k.key_id for k in fv.keys()]
        assert fv.revoke_key(key.key_id).revoked_at is not None
        assert fv.get_collection("door").collection_id == "door"
        assert fv.delete_collection("door").deleted
        events = fv.audit_page(subject="obama", action="verify")
        assert len(events.items) >= 6


def test_the_async_client_has_the_same_methods(server: str) -> None:
    sync = {n for n in dir(Client) if not n.startswith("_")}
    assert sync - {"close"} == {n for n in dir(AsyncClient) if not n.startswith("_")} - {"aclose"}

    async def run() -> None:
        async with AsyncClient(server, api_key=KEY) as fv:
            assert (await fv.health()).status == "ok" and (await fv.ready()).status == "ready"
            assert (await fv.info()).service == "faceverify"
            made = await fv.create_collection("lab")
            assert made.collection_id == "lab"
            assert (await fv.update_collection("lab", {"retention_days": 5})).retention_days == 5
            assert (await fv.get_collection("lab")).retention_days == 5
            assert "lab" in [c.collection_id for c in await fv.collections()]
            enrolled = await fv.enroll(
                "curie", [DATA / "curie_upright.jpg"], collection="lab", name="Marie Curie"
            )
            await fv.enroll("curie", DATA / "curie_orientation_3.jpg", collection="lab", add=True)
            result = await fv.verify("curie", DATA / "curie_orientation_6.jpg", collection="lab")
            assert result.match
            several = await asyncio.gather(
                *(fv.compare(DATA / "obama.jpg", DATA / "obama2.jpg") for _ in range(4))
            )
            assert len({r.distance for r in several}) == 1
            who = await fv.identify(DATA / "curie_orientation_8.jpg", collection="lab")
            assert who.best is not None and who.best.subject_id == "curie"
            face_id = enrolled.faces[0].face_id
            by_face = await fv.identify(face_id=face_id, collection="lab")
            assert [c.subject_id for c in by_face.candidates] == ["curie"]
            assert len((await fv.detect(DATA / "two_people.jpg")).faces) == 2
            ids = [s.subject_id async for s in fv.subjects(collection="lab", page=1)]
            assert ids == ["curie"]
            assert len((await fv.get_subject("curie", collection="lab")).faces) == 2
            export = await fv.export_subject("curie", collection="lab")
            assert export.subject.name == "Marie Curie" and export.audit_events
            assert (await fv.delete_face("curie", face_id, collection="lab")).face_count == 1
            key = await fv.create_key("lab kiosk", ["verify"], collection="lab")
            assert key.key_id in [k.key_id for k in await fv.keys()]
            assert (await fv.revoke_key(key.key_id)).revoked_at is not None
            events = await fv.audit_page(collection="lab", action="verify")
            assert [e.subjects for e in events.items] == [["curie"]]
            with pytest.raises(errors.SubjectNotFound) as raised:
                await fv.verify("nobody", DATA / "obama.jpg")
            assert raised.value.subject_id == "nobody" and raised.value.request_id
            assert (await fv.delete_subject("curie", collection="lab")).deleted
            assert (await fv.delete_collection("lab")).deleted

    asyncio.run(run())


def test_errors_are_typed_exceptions_with_their_fields(server: str) -> None:
    with client(server) as fv:
        with pytest.raises(errors.NoFace) as no_face:
            fv.enroll("x", DATA / "coffee.png")
        assert no_face.value.status == 422 and no_face.value.image_index == 0
        with pytest.raises(errors.MultipleFaces) as many:
            fv.enroll("x", DATA / "two_people.jpg")
        assert [type(b) for b in many.value.boxes or []] == [models.Box, models.Box]
        fv.enroll("pair", DATA / "biden.jpg")
        with pytest.raises(errors.FaceMismatch) as mismatch:
            fv.enroll("pair", DATA / "obama.jpg", add=True)
        assert (mismatch.value.distance or 0) > (mismatch.value.threshold or 1)
        with pytest.raises(errors.SubjectExists):
            fv.enroll("pair", DATA / "biden.jpg")
        with pytest.raises(errors.UnsupportedMediaType):
            fv.verify("pair", b"just text")
        with pytest.raises(errors.ValidationFailed) as invalid:
            fv.verify("pair", DATA / "biden.jpg", prior=2.0)
        assert invalid.value.errors
        with pytest.raises(errors.CollectionNotFound):
            fv.get_collection("nowhere")
        with pytest.raises(errors.KeyNotFound):
            fv.revoke_key("no-such-key")
        with pytest.raises(errors.FaceNotFound):
            fv.delete_face("pair", "no-such-face")
    with Client(server, api_key="wrong") as stranger, pytest.raises(errors.Unauthorized):
        stranger.info()
    with client(server) as fv:
        limited = fv.create_key("reader", ["verify"])
    with Client(server, api_key=limited.key) as reader:
        with pytest.raises(errors.Forbidden) as forbidden:
            reader.enroll("y", DATA / "obama.jpg")
        assert forbidden.value.required_scope == "enroll"


class Flaky(httpx2.BaseTransport):
    """The real server behind a transport that fails the first attempt: ``mode``
    busy answers 503 (Retry-After: 0) without sending the request on; reset sends
    it on, lets the server answer (and store), then drops the connection."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.real = httpx2.HTTPTransport()
        self.attempts: list[str | None] = []

    def close(self) -> None:
        self.real.close()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.attempts.append(request.headers.get("idempotency-key"))
        if len(self.attempts) == 1 and self.mode == "busy":
            body = b'{"status": 503, "code": "service_busy", "detail": "busy", "retry_after": 0}'
            return httpx2.Response(503, headers={"Retry-After": "0"}, content=body)
        response = self.real.handle_request(request)
        if len(self.attempts) == 1 and self.mode == "reset":
            response.read()
            raise httpx2.ReadError("connection reset by peer", request=request)
        return response


@pytest.mark.parametrize("mode", ["busy", "reset"])
def test_a_retried_enroll_stores_once(server: str, mode: str) -> None:
    flaky = Flaky(mode)
    with client(server, transport=flaky, backoff=0.01) as fv:
        result = fv.enroll(f"retry-{mode}", DATA / "obama.jpg")
    assert result.face_count == 1
    assert len(flaky.attempts) == 2 and flaky.attempts[0] == flaky.attempts[1] is not None
    with client(server) as fv:
        assert len(fv.get_subject(f"retry-{mode}").faces) == 1  # never stored twice
        fv.delete_subject(f"retry-{mode}")


def test_retries_are_bounded_and_honour_retry_after() -> None:
    calls: list[float] = []

    def busy(request: httpx2.Request) -> httpx2.Response:
        calls.append(0)
        return httpx2.Response(
            429,
            headers={"Retry-After": "0", "X-Request-ID": "r1"},
            json={"status": 429, "code": "rate_limited", "detail": "slow down", "retry_after": 0},
        )

    with Client("http://fv", transport=httpx2.MockTransport(busy), retries=2) as fv:
        with pytest.raises(errors.RateLimited) as limited:
            fv.health()
    assert len(calls) == 3 and limited.value.retry_after == 0
    assert limited.value.request_id == "r1" and isinstance(limited.value, errors.ServiceBusy)
    # A POST that is not safe to send twice is not retried after it may have arrived.
    posts: list[int] = []

    def dropped(request: httpx2.Request) -> httpx2.Response:
        posts.append(1)
        raise httpx2.ReadError("reset", request=request)

    with Client("http://fv", transport=httpx2.MockTransport(dropped)) as fv:
        with pytest.raises(errors.ConnectionFailed):
            fv.create_collection("door")
    assert posts == [1]


def test_photos_of_the_wrong_kind_are_refused_before_sending() -> None:
    with Client("http://fv", transport=httpx2.MockTransport(lambda r: httpx2.Response(500))) as fv:
        with pytest.raises(TypeError, match="a photo is a path"):
            fv.verify("x", 42)
        with pytest.raises(TypeError, match="binary mode"):
            fv.verify("x", io.StringIO("text"))
        with pytest.raises(ValueError, match="photo or a face_id"):
            fv.identify()
