"""Use cases with the fake pipeline: enroll rules, verify/identify/compare, deletion."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from app.errors import (
    FaceMismatch,
    FaceTooSmall,
    IdempotencyKeyReused,
    MultipleFaces,
    NoFace,
    RequestCancelled,
    SubjectExists,
    SubjectHasNoFaces,
    SubjectNotFound,
    TooManyImages,
)
from app.service import CommitGate, FaceService, commit_gate
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import fake_service as _fake_service
from tests.helpers import parts, service_on


def test_enroll_then_verify_same_and_different_person(fake_service: FaceService) -> None:
    result = fake_service.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1))], name="Ann"
    )
    assert result.subject.face_count == 1 and result.subject.name == "Ann"
    same = fake_service.verify(
        collection="default", subject_id="ann", image=fake_image(face(1, noise=0.2))
    )
    other = fake_service.verify(collection="default", subject_id="ann", image=fake_image(face(2)))
    assert same.result.match and same.result.distance < 0.3
    assert not other.result.match and other.result.distance > 1.0
    assert same.result.score > 50 > other.result.score
    assert same.face_id == result.faces[0].id


def test_enroll_several_photos_adds_to_the_subject(fake_service: FaceService) -> None:
    fake_service.enroll(
        collection="default",
        subject_id="ann",
        images=[fake_image(face(1)), fake_image(face(1, noise=0.1))],
    )
    with pytest.raises(SubjectExists):  # adding to a subject must be explicit
        fake_service.enroll(
            collection="default", subject_id="ann", images=[fake_image(face(1, noise=0.2))]
        )
    result = fake_service.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1, noise=0.2))], add=True
    )
    assert result.subject.face_count == 3


def test_one_bad_photo_stores_nothing(fake_service: FaceService) -> None:
    images = [fake_image(face(1)), fake_image()]
    with pytest.raises(NoFace) as info:
        fake_service.enroll(collection="default", subject_id="ann", images=images)
    assert info.value.extra["image_index"] == 1
    with pytest.raises(SubjectNotFound):
        fake_service.get_subject(collection="default", subject_id="ann")
    assert fake_service.gallery_counts() == {"faces": 0, "subjects": 0}


def test_two_faces_are_refused_unless_largest_is_asked_for(fake_service: FaceService) -> None:
    two = fake_image(face(1, box=(0, 0, 60, 60)), face(2, box=(100, 0, 300, 200)))
    with pytest.raises(MultipleFaces) as info:
        fake_service.enroll(collection="default", subject_id="ann", images=[two])
    assert len(info.value.extra["boxes"]) == 2
    fake_service.enroll(collection="default", subject_id="ann", images=[two], face_policy="largest")
    # The largest face (seed 2) is the one stored.
    assert fake_service.verify(
        collection="default", subject_id="ann", image=fake_image(face(2))
    ).result.match


def test_small_faces_are_refused_at_enrollment(fake_service: FaceService) -> None:
    with pytest.raises(FaceTooSmall):
        fake_service.enroll(
            collection="default", subject_id="ann", images=[fake_image(face(1, box=(0, 0, 39, 39)))]
        )
    fake_service.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1, box=(0, 0, 40, 40)))]
    )


def test_verify_unknown_subject_costs_no_inference(fake_service: FaceService) -> None:
    with pytest.raises(SubjectNotFound):
        fake_service.verify(collection="default", subject_id="nobody", image=fake_image(face(1)))
    assert parts(fake_service).pipeline.encoder.encode_calls == 0  # type: ignore[attr-defined]


def test_verify_a_subject_with_every_face_deleted(fake_service: FaceService) -> None:
    enrolled = fake_service.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1))]
    )
    fake_service.delete_face(collection="default", subject_id="ann", face_id=enrolled.faces[0].id)
    with pytest.raises(SubjectHasNoFaces):
        fake_service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))


def test_verify_probe_with_two_faces_uses_the_largest(fake_service: FaceService) -> None:
    fake_service.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    probe = fake_image(face(2, box=(0, 0, 50, 50)), face(1, box=(0, 0, 200, 200)))
    result = fake_service.verify(collection="default", subject_id="ann", image=probe)
    assert result.result.match and result.probe.faces_detected == 2


def test_identify_ranks_subjects_and_gates_best_on_threshold(fake_service: FaceService) -> None:
    for seed in range(10):
        fake_service.enroll(
            collection="default", subject_id=f"s{seed}", images=[fake_image(face(seed))]
        )
    result = fake_service.identify(
        collection="default", image=fake_image(face(3, noise=0.1)), top_k=4
    )
    assert [c.subject_id for c in result.candidates][0] == "s3"
    assert len(result.candidates) == 4 and result.best is not None
    assert result.best.subject_id == "s3"
    stranger = fake_service.identify(collection="default", image=fake_image(face(99)))
    assert stranger.best is None and len(stranger.candidates) == 5


def test_compare_stores_nothing(fake_service: FaceService) -> None:
    result = fake_service.compare(
        image_a=fake_image(face(1)), image_b=fake_image(face(1, noise=0.1))
    )
    assert result.result.match
    assert fake_service.list_subjects(collection="default", offset=0, limit=10)[1] == 0


def test_delete_subject_removes_it_from_search_at_once(fake_service: FaceService) -> None:
    fake_service.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1)), fake_image(face(1))]
    )
    assert fake_service.delete_subject(collection="default", subject_id="ann") == 2
    assert fake_service.identify(collection="default", image=fake_image(face(1))).candidates == []
    with pytest.raises(SubjectNotFound):
        fake_service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))


def test_two_processes_on_one_database_see_each_others_writes(settings: Settings) -> None:
    a, b = _fake_service(settings), _fake_service(settings)
    try:
        a.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
        assert b.verify(
            collection="default", subject_id="ann", image=fake_image(face(1))
        ).result.match
        assert b.identify(collection="default", image=fake_image(face(1))).best is not None
        b.delete_subject(collection="default", subject_id="ann")
        with pytest.raises(SubjectNotFound):
            a.verify(collection="default", subject_id="ann", image=fake_image(face(1)))
        assert a.identify(collection="default", image=fake_image(face(1))).candidates == []
    finally:
        a.close()
        b.close()


def test_scores_follow_distance(fake_service: FaceService) -> None:
    fake_service.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    scores = [
        fake_service.verify(
            collection="default", subject_id="ann", image=fake_image(face(1, noise=n))
        ).result
        for n in (0.0, 0.3, 0.6, 1.0)
    ]
    assert np.all(np.diff([s.distance for s in scores]) > 0)
    assert np.all(np.diff([s.score for s in scores]) <= 0)
    assert all(0.1 <= s.score <= 99.9 for s in scores)


def test_admission_refuses_past_slots_plus_queue(settings: Settings) -> None:
    """Requests past inference slots + queue get 429 at once, before taking a thread."""
    import asyncio

    from starlette.requests import Request

    from app.api.deps import Admission, admit
    from app.api.inputs import RequestBody
    from app.errors import TooManyRequests
    from app.keys import Principal

    class State:
        admission = Admission(limit=2)

    class App:
        state = State()

    request = Request({"type": "http", "app": App(), "headers": []})
    request.state.principal = Principal(("verify",), "default", "k")

    async def scenario() -> None:
        first, second = admit(request, RequestBody()), admit(request, RequestBody())
        await anext(first)
        await anext(second)
        with pytest.raises(TooManyRequests):
            await anext(admit(request, RequestBody()))
        await first.aclose()
        third = admit(request, RequestBody())
        await anext(third)  # a place was freed
        assert App.state.admission.active == 2
        await second.aclose()
        await third.aclose()
        assert App.state.admission.active == 0

    asyncio.run(scenario())


def test_admission_gives_each_key_its_own_share_of_the_queue() -> None:
    """One key flooding fills its share, not the queue: another key is still admitted
    (issue 25: 48 clients of one key got another's /verify 429 on 37 of 41 requests)."""
    import asyncio

    from starlette.requests import Request

    from app.api.deps import Admission, admit, refuse_before_body
    from app.api.inputs import RequestBody
    from app.errors import TooManyRequests
    from app.keys import Principal
    from app.slots import Tenant, current_tenant

    class State:
        admission = Admission(limit=10, per_key=3)

    class App:
        state = State()

    def request_of(key: str) -> Request:
        request = Request({"type": "http", "app": App(), "headers": []})
        request.state.principal = Principal(("verify",), key, key)
        return request

    async def scenario() -> None:
        flood = [admit(request_of("noisy"), RequestBody()) for _ in range(3)]
        for held in flood:
            await anext(held)
        with pytest.raises(TooManyRequests, match="its share"):
            await anext(admit(request_of("noisy"), RequestBody()))
        # ... and before its body is read at all.
        with pytest.raises(TooManyRequests, match="its share"):
            await refuse_before_body(request_of("noisy"))
        await refuse_before_body(request_of("quiet"))
        quiet = admit(request_of("quiet"), RequestBody())
        await anext(quiet)
        # The route's thread sees whom it works for: the slots share by it.
        assert current_tenant.get() == Tenant("quiet", "quiet")
        await quiet.aclose()
        for held in flood:
            await held.aclose()
        assert App.state.admission.active == 0 and not App.state.admission.by_key

    asyncio.run(scenario())


# ---- issue 9, finding 14: enrollments cannot take over a subject ------------------------
def test_a_face_of_someone_else_is_refused_when_adding(fake_service: FaceService) -> None:
    fake_service.enroll(collection="default", subject_id="victim", images=[fake_image(face(1))])
    with pytest.raises(FaceMismatch) as info:
        fake_service.enroll(
            collection="default", subject_id="victim", images=[fake_image(face(2))], add=True
        )
    assert info.value.extra["distance"] > 0.6
    assert fake_service.get_subject(collection="default", subject_id="victim")[0].face_count == 1
    # The same person is welcome; an admin may force a stranger in.
    fake_service.enroll(
        collection="default", subject_id="victim", images=[fake_image(face(1, noise=0.2))], add=True
    )
    fake_service.enroll(
        collection="default",
        subject_id="victim",
        images=[fake_image(face(2))],
        add=True,
        force=True,
    )
    assert fake_service.get_subject(collection="default", subject_id="victim")[0].face_count == 3


def test_a_new_subject_from_two_different_people_is_refused(fake_service: FaceService) -> None:
    with pytest.raises(FaceMismatch) as info:
        fake_service.enroll(
            collection="default",
            subject_id="mix",
            images=[fake_image(face(1)), fake_image(face(2))],
        )
    assert info.value.extra["image_index"] == 1
    with pytest.raises(SubjectNotFound):
        fake_service.get_subject(collection="default", subject_id="mix")


def test_adding_to_a_subject_that_does_not_exist_is_404(fake_service: FaceService) -> None:
    with pytest.raises(SubjectNotFound):
        fake_service.enroll(
            collection="default", subject_id="nobody", images=[fake_image(face(1))], add=True
        )


def test_enrollments_are_capped_in_photos(fake_service: FaceService) -> None:
    cap = parts(fake_service).settings.max_enroll_images
    with pytest.raises(TooManyImages):
        fake_service.enroll(
            collection="default", subject_id="many", images=[fake_image(face(1))] * (cap + 1)
        )
    assert fake_service.enroll(
        collection="default", subject_id="many", images=[fake_image(face(1))] * cap
    )


# ---- finding 2: a timed-out enroll stores nothing; Idempotency-Key makes retries safe ----
def test_an_expired_request_stores_nothing(fake_service: FaceService) -> None:
    gate = CommitGate()
    token = commit_gate.set(gate)
    try:
        assert gate.expire()
        with pytest.raises(RequestCancelled):
            fake_service.enroll(
                collection="default", subject_id="late", images=[fake_image(face(1))]
            )
    finally:
        commit_gate.reset(token)
    with pytest.raises(SubjectNotFound):
        fake_service.get_subject(collection="default", subject_id="late")
    # Once committing, the timeout cannot win any more.
    gate = CommitGate()
    assert gate.begin_commit() and not gate.expire()


def test_a_retry_with_the_same_idempotency_key_stores_once(fake_service: FaceService) -> None:
    images = [fake_image(face(1))]
    first = fake_service.enroll(
        collection="default", subject_id="ann", images=images, idempotency=("k1", "abc")
    )
    again = fake_service.enroll(
        collection="default", subject_id="ann", images=images, idempotency=("k1", "abc")
    )
    assert not first.replayed and again.replayed
    assert [f.id for f in again.faces] == [f.id for f in first.faces]
    assert fake_service.get_subject(collection="default", subject_id="ann")[0].face_count == 1
    with pytest.raises(IdempotencyKeyReused):  # same key, another request
        fake_service.enroll(
            collection="default", subject_id="bob", images=images, idempotency=("k1", "abc")
        )
    # Keys are per API key: another client's "abc" is its own.
    with pytest.raises(SubjectExists):
        fake_service.enroll(
            collection="default", subject_id="ann", images=images, idempotency=("k2", "abc")
        )


def test_concurrent_requests_with_one_idempotency_key_store_once(settings: Settings) -> None:
    service = _fake_service(settings)
    parts(service).pipeline.delay = 0.2  # type: ignore[attr-defined]
    images = [fake_image(face(1))]
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda _: service.enroll(
                    collection="default", subject_id="ann", images=images, idempotency=("k", "x")
                ),
                range(2),
            )
        )
    assert sorted(r.replayed for r in results) == [False, True]
    assert service.get_subject(collection="default", subject_id="ann")[0].face_count == 1
    assert service.gallery_counts()["faces"] == 1
    service.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'g.db'}"
        return
    from tests.helpers import fresh_postgres_database

    yield from fresh_postgres_database()


def test_deleting_a_collection_under_verify_traffic(database_url: str, settings: Settings) -> None:
    """Two processes verify against two collections while one collection is deleted:
    every answer is right, and once the delete has answered, no process matches a face
    of the deleted collection again; the other collection never notices (issue 11)."""
    settings = settings.model_copy(
        update={"database_url": database_url, "max_concurrent_inference": 8}
    )
    a, b = _fake_service(settings), _fake_service(settings)
    a.create_collection(collection="door")
    a.create_collection(collection="lobby")
    alice, bob = fake_image(face(1)), fake_image(face(2))
    a.enroll(collection="door", subject_id="alice", images=[alice])
    a.enroll(collection="lobby", subject_id="bob", images=[bob])
    deleted, stop = threading.Event(), threading.Event()
    wrong: list[str] = []
    counts = {"match": 0, "gone": 0}

    def traffic(service: FaceService) -> None:
        while not stop.is_set():
            after = deleted.is_set()  # read before the request starts
            try:
                got = service.verify(collection="door", subject_id="alice", image=alice)
                if after or not got.result.match:
                    wrong.append(f"door answered {got.result.match} (after delete: {after})")
                counts["match"] += 1
            except SubjectNotFound:
                counts["gone"] += 1
            except Exception as exc:  # any other outcome is a wrong answer
                wrong.append(repr(exc))
            if not service.verify(collection="lobby", subject_id="bob", image=bob).result.match:
                wrong.append("lobby lost bob")
            if after and service.identify(collection="door", image=alice).candidates:
                wrong.append("identify found a deleted face")

    threads = [threading.Thread(target=traffic, args=(s,)) for s in (a, a, b, b)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    record = a.delete_collection(collection="door")
    deleted.set()
    time.sleep(0.4)
    stop.set()
    for t in threads:
        t.join()
    try:
        assert wrong == []
        assert counts["match"] > 0 and counts["gone"] > 0  # traffic on both sides of it
        assert (record.subjects, record.faces) == (1, 1)
        assert [c.id for c in b.list_collections()] == ["default", "lobby"]
        assert b.gallery_counts() == {"faces": 1, "subjects": 1}
    finally:
        a.close()
        b.close()


def test_verify_works_while_the_index_loads_and_identify_waits_for_it(settings: Settings) -> None:
    """A server answers at once at any gallery size: the 1:N index loads in a thread,
    verify and enroll read subjects by key meanwhile, identify says 503 index_loading
    (issue 12)."""
    from app.errors import IndexLoading
    from app.gallery import Gallery

    first = _fake_service(settings)
    first.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    first.close()
    store = Gallery.connect(settings.resolved_database_url())
    release = threading.Event()
    load = store.faces.load

    def slow_load(**kwargs):  # type: ignore[no-untyped-def]
        release.wait(10)
        return load(**kwargs)

    store.faces.load = slow_load  # type: ignore[method-assign]
    service = service_on(
        settings.model_copy(
            update={"inference_wait_seconds": 0.2, "enroll_min_quality": 0}  # fake faces are flat
        ),
        store,
        background=True,
    )
    try:
        assert not service.index_ready.is_set()
        got = service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))
        assert got.result.match and got.result.distance == 0.0
        service.enroll(collection="default", subject_id="bo", images=[fake_image(face(2))])
        with pytest.raises(IndexLoading) as info:
            service.identify(collection="default", image=fake_image(face(1)))
        assert info.value.retry_after >= 1
        release.set()
        assert service.index_ready.wait(5)
        hits = service.identify(collection="default", image=fake_image(face(2)))
        assert hits.best is not None and hits.best.subject_id == "bo"  # enrolled during load
        assert service.gallery_counts() == {"faces": 2, "subjects": 2}
    finally:
        release.set()
        store.close()


def test_a_bulk_load_leaves_room_to_grow() -> None:
    from app.vectors.index import ExactIndex

    index = ExactIndex(128)
    index.add([f"f{i}" for i in range(4000)], ["s"] * 4000, np.ones((4000, 128), np.float32))
    assert index.nbytes() >= 1.25 * 4000 * 129 * 4  # the next enroll does not copy it all


def test_verify_answers_a_known_subject_from_memory_until_any_write(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas on one database: the subject's faces are read once while the gallery
    does not change, and read again after a write on the other replica (a face deleted,
    a face added), so a cached answer is never a stale one."""
    a, b = _fake_service(settings), _fake_service(settings)
    a.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    reads = []
    real = parts(a).gallery.subjects.embeddings
    monkeypatch.setattr(
        parts(a).gallery.subjects, "embeddings", lambda **kw: reads.append(kw) or real(**kw)
    )
    for _ in range(3):
        assert a.verify(
            collection="default", subject_id="ann", image=fake_image(face(1))
        ).result.match
    assert len(reads) == 1
    first = b.get_subject(collection="default", subject_id="ann")[1][0].id
    b.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(2))], add=True, force=True
    )
    b.delete_face(collection="default", subject_id="ann", face_id=first)
    answer = a.verify(collection="default", subject_id="ann", image=fake_image(face(1)))
    assert not answer.result.match and answer.face_id != first
    assert len(reads) == 2
    assert a.verify(collection="default", subject_id="ann", image=fake_image(face(2))).result.match


def test_verifying_a_subject_read_before_reads_the_gallery_version_once(
    fake_service: FaceService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before inference (is the subject there at all?) is not repeated for a
    subject this process has read; the read after inference decides, also when the
    subject lost its faces meanwhile."""
    enrolled = fake_service.enroll(
        collection="default", subject_id="ann", images=[fake_image(face(1))]
    )
    fake_service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))
    versions = []
    real = parts(fake_service).gallery.changes.version
    monkeypatch.setattr(
        parts(fake_service).gallery.changes, "version", lambda: versions.append(1) or real()
    )
    assert fake_service.verify(
        collection="default", subject_id="ann", image=fake_image(face(1))
    ).result.match
    assert len(versions) == 1
    fake_service.delete_face(collection="default", subject_id="ann", face_id=enrolled.faces[0].id)
    with pytest.raises(SubjectHasNoFaces):
        fake_service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))
    fake_service.delete_subject(collection="default", subject_id="ann")
    with pytest.raises(SubjectNotFound):
        fake_service.verify(collection="default", subject_id="ann", image=fake_image(face(1)))


def test_a_search_by_a_face_never_returns_that_face(fake_service: FaceService) -> None:
    """The searched face's own subject, with no other face, is not a candidate (it was
    answered at distance +inf, and its false match rate then failed with a 500)."""
    for seed in (1, 2):
        fake_service.enroll(
            collection="default", subject_id=f"s{seed}", images=[fake_image(face(seed))]
        )
    (own,) = parts(fake_service).gallery.faces.of_subject(collection="default", subject_id="s1")
    found = fake_service.identify_face(collection="default", face_id=own.id, top_k=5)
    assert [c.subject_id for c in found.candidates] == ["s2"]
    assert all(np.isfinite(c.result.distance) for c in found.candidates)


def test_a_probes_quality_is_scored_beside_its_encoding_on_a_spare_core(
    fake_service: FaceService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.face import quality
    from app.face.cores import SpareCores

    cores = SpareCores(2)
    monkeypatch.setattr("app.service.probes.spare_cores", lambda: cores)
    monkeypatch.setattr("app.slots.spare_cores", lambda: cores)
    measured = quality.measure
    threads: list[str] = []

    def spy(found):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return measured(found)

    monkeypatch.setattr(quality, "measure", spy)
    fake_service.enroll(collection="default", subject_id="ann", images=[fake_image(face(1))])
    probe = fake_image(face(1, noise=0.2))
    beside = fake_service.verify(collection="default", subject_id="ann", image=probe)
    assert threads[-1].startswith("faceverify-spare")
    # Every core taken by other requests: in the caller's thread, the same answer.
    with cores.inferring():
        alone = fake_service.verify(collection="default", subject_id="ann", image=probe)
    assert threads[-1] == threading.current_thread().name
    assert beside.probe is not None and alone.probe is not None
    assert beside.probe.quality == alone.probe.quality
    assert beside.result == alone.result
