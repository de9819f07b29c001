"""dlib's HOG detector with its pyramid split between two cores (app/face/hog.py), and
the spare-core helper it runs on (app/face/cores.py): the same boxes and scores as one
scan, on real photos."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from app.cpus import usable_cpus
from app.face import hog
from app.face.cores import SpareCores
from app.face.hog import (
    SplitHog,
    frontal_cache_files,
    frontal_detector,
    frontal_layout,
    prime_frontal,
    read_layout,
    saved_form,
)
from app.settings import Settings
from tests.helpers import data

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "two_people.jpg")


def _images() -> list[tuple[str, np.ndarray]]:
    """Each photo at three sizes, grey (the quick pass) and colour (the full search)."""
    out = []
    for name in PHOTOS:
        with Image.open(io.BytesIO(data(name))) as img:
            rgb = img.convert("RGB")
        for side in (320, 480, 800):
            scale = side / max(rgb.size)
            size = (round(rgb.width * scale), round(rgb.height * scale))
            small = rgb.resize(size, Image.Resampling.BILINEAR)
            out.append((f"{name}@{side} RGB", np.asarray(small)))
            out.append((f"{name}@{side} L", np.asarray(small.convert("L"))))
    return out


def _boxes(rects: list, scores: list) -> list[tuple[float, tuple[int, int, int, int]]]:  # type: ignore[type-arg]
    return [
        (round(float(s), 9), (r.left(), r.top(), r.right(), r.bottom()))
        for r, s in zip(rects, scores, strict=True)
    ]


def test_the_saved_form_gives_the_overlap_rule_and_a_two_level_copy() -> None:
    layout = frontal_layout(dlib)
    assert layout is not None
    # dlib's frontal face detector's test_box_overlap, as it saved it.
    assert 0.30 < layout.iou < 0.35 and 0.75 < layout.covered < 0.8
    assert layout.min_layer == (64, 64)
    # The copy scans fewer levels: a face only the small levels see is not found by it.
    first = SplitHog(dlib, layout, SpareCores(1))._first
    with Image.open(io.BytesIO(data("obama.jpg"))) as img:
        grey = img.convert("L")
    (face,) = dlib.get_frontal_face_detector()(np.asarray(grey))
    # The face made ~240 px: level 0 looks for 80 px faces, level 6 for ~240 px ones.
    scale = 240 / face.width()
    big = np.asarray(grey.resize((round(grey.width * scale), round(grey.height * scale))))
    assert len(dlib.get_frontal_face_detector()(big)) == 1
    assert first is not None and len(first.run(big, 0, 0.0)[0]) == 0


def test_no_writable_temporary_directory_turns_the_split_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layout = frontal_layout(dlib)

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("app.face.hog.tempfile.mkstemp", read_only)
    assert frontal_layout(dlib) is None
    hog = SplitHog(dlib, layout, SpareCores(2))
    assert hog._first is None and hog._layout is None
    rects, scores = hog.run(np.asarray(Image.open(io.BytesIO(data("obama.jpg"))).convert("L")))
    assert len(rects) == 1 and scores[0] > 0


def test_bytes_not_laid_out_as_read_turn_the_split_off() -> None:
    assert read_layout(b"") is None
    assert read_layout(b"\x01\x03" + saved_form(dlib.get_frontal_face_detector())[2:]) is None
    hog = SplitHog(dlib, None, SpareCores(2))
    rects, scores = hog.run(np.asarray(Image.open(io.BytesIO(data("obama.jpg"))).convert("L")))
    assert len(rects) == 1 and scores[0] > 0


@pytest.mark.model
def test_a_copy_of_the_frontal_detector_finds_what_dlibs_own_finds() -> None:
    own, copy = dlib.get_frontal_face_detector(), frontal_detector(dlib)
    assert copy is not frontal_detector(dlib)  # each caller gets a detector of its own
    for name, image in _images():
        assert _boxes(*copy.run(image, 0, 0.0)[:2]) == _boxes(*own.run(image, 0, 0.0)[:2]), name


def test_start_up_builds_dlibs_frontal_detector_at_most_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """dlib builds it from text in ~0.25 s holding the GIL: start-up built three, and each
    inference slot's detector set one more (issue 41). Copies cost ~2 ms."""
    from app.face import quality
    from app.face.registry import build_pipeline

    built = []
    original = dlib.get_frontal_face_detector

    def counted() -> object:
        built.append(1)
        return original()

    monkeypatch.setattr(dlib, "get_frontal_face_detector", counted)
    monkeypatch.setattr(quality, "_HOG", None)
    pipeline = build_pipeline(Settings(max_concurrent_inference=3))
    with pipeline.detector.models.borrow(), pipeline.detector.models.borrow():
        with pipeline.detector.models.borrow():  # three slots busy at once: three sets
            assert pipeline.detector.models.created == 3
    assert len(built) <= 1


def _counted_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A process with no frontal detector built yet, counting dlib's builds from text."""
    built: list[int] = []
    original = dlib.get_frontal_face_detector

    def counted() -> object:
        built.append(1)
        return original()

    monkeypatch.setattr(dlib, "get_frontal_face_detector", counted)
    monkeypatch.setattr(hog, "_FRONTAL", {})
    return built


@pytest.mark.model
def test_a_start_loads_the_frontal_detector_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first start builds it from text (0.25-0.3 s holding the GIL, which the index
    load's threads waited for: issue 41) and keeps its saved form; the next ones load
    that in ~2 ms, a detector that finds exactly what dlib's own finds."""
    built = _counted_builds(monkeypatch)
    assert prime_frontal(dlib, tmp_path) == "built" and len(built) == 1
    assert prime_frontal(dlib, tmp_path) == "present"
    saved, record = frontal_cache_files(dlib, tmp_path)
    assert saved.read_bytes() == saved_form(dlib.get_frontal_face_detector())
    assert dlib.__version__ in saved.name and record.is_file()

    built = _counted_builds(monkeypatch)
    assert prime_frontal(dlib, tmp_path) == "loaded" and built == []
    own, loaded = dlib.get_frontal_face_detector(), frontal_detector(dlib)
    assert saved_form(loaded) == saved_form(own)
    for name, image in _images():
        assert _boxes(*loaded.run(image, 0, 0.0)[:2]) == _boxes(*own.run(image, 0, 0.0)[:2]), name


@pytest.mark.model
@pytest.mark.parametrize("damage", ["byte", "truncated", "record", "other dlib", "no record"])
def test_a_damaged_or_foreign_cached_detector_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """A cached form whose bytes are not the ones its record hashes (a byte changed, cut
    short), an unreadable record, or one another dlib wrote is never loaded: the
    detector is built from dlib's text again and the cache written anew."""
    _counted_builds(monkeypatch)
    prime_frontal(dlib, tmp_path)
    saved, record = frontal_cache_files(dlib, tmp_path)
    good = saved.read_bytes()
    if damage == "byte":
        at = len(good) // 2
        saved.write_bytes(good[:at] + bytes([good[at] ^ 1]) + good[at + 1 :])
    elif damage == "truncated":
        saved.write_bytes(good[:-100])
    elif damage == "record":
        record.write_text("{not json")
    elif damage == "other dlib":
        record.write_text(record.read_text().replace(dlib.__version__, "19.0.0"))
    else:
        record.unlink()

    built = _counted_builds(monkeypatch)
    assert prime_frontal(dlib, tmp_path) == "built" and len(built) == 1
    assert saved.read_bytes() == good
    assert hog.cached_frontal_form(dlib, tmp_path) is not None


@pytest.mark.model
def test_a_cache_that_cannot_be_written_only_costs_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only cache (an image built before the cache held the detector): built
    from text each start, as before, and no error."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    built = _counted_builds(monkeypatch)
    assert prime_frontal(dlib, blocker / "cache") == "built" and len(built) == 1
    assert frontal_detector(dlib) is not None


@pytest.mark.model
def test_the_split_scan_finds_exactly_what_one_scan_finds() -> None:
    hog = SplitHog(dlib, frontal_layout(dlib), SpareCores(2))
    faces = 0
    for name, image in _images():
        rects, scores, _ = hog.whole.run(image, 0, 0.0)
        expected = _boxes(rects, scores)
        assert _boxes(*hog.run(image)) == expected, name
        faces += len(expected)
    assert faces >= 25  # the photos' faces at most sizes, two_people's two among them


@pytest.mark.model
def test_the_split_runs_on_a_spare_core_and_not_under_load() -> None:
    cores = SpareCores(2)
    hog = SplitHog(dlib, frontal_layout(dlib), cores)
    seen: list[str] = []
    rest = hog._rest

    def spy(image: np.ndarray) -> list:  # type: ignore[type-arg]
        seen.append(threading.current_thread().name)
        return rest(image)

    hog._rest = spy  # type: ignore[method-assign]
    image = np.asarray(Image.open(io.BytesIO(data("obama.jpg"))).convert("L"))
    hog.run(image)
    assert seen and seen[-1].startswith("faceverify-spare")
    # Two requests inferring on two cores: no core is spare, one scan in the caller.
    seen.clear()
    with cores.inferring(), cores.inferring():
        assert not cores.spare()
        hog.run(image)
    assert seen == []
    with cores.inferring():
        assert cores.spare()


def test_beside_returns_both_results_and_raises_either_error_after_both_end() -> None:
    cores = SpareCores(2)
    main_thread = threading.current_thread().name
    threads: list[str] = []

    def side() -> int:
        threads.append(threading.current_thread().name)
        return 1

    assert cores.beside(side, lambda: 2) == (1, 2)
    assert threads[0] != main_thread
    finished = threading.Event()

    def slow_side() -> int:
        finished.wait(0.2)
        threads.append("side done")
        return 1

    def failing_main() -> int:
        raise ValueError("main")

    with pytest.raises(ValueError, match="main"):
        cores.beside(slow_side, failing_main)
    assert threads[-1] == "side done"  # the side task ended before the error surfaced

    def failing_side() -> int:
        raise KeyError("side")

    with pytest.raises(KeyError):
        cores.beside(failing_side, lambda: 2)
    # One core: everything in the caller's thread.
    threads.clear()
    assert SpareCores(1).beside(side, lambda: 2) == (1, 2)
    assert threads == [main_thread]


def test_usable_cpus_follow_the_affinity_and_a_cgroup_quota(tmp_path: Path) -> None:
    mine = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cpus(tmp_path / "absent") == mine
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == mine
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs
    assert usable_cpus(cpu_max) == 1
    cpu_max.write_text("6400000 100000\n")  # more than this process may use
    assert usable_cpus(cpu_max) == mine
    cpu_max.write_text("garbage")
    assert usable_cpus(cpu_max) == mine
    assert Settings().max_concurrent_inference == usable_cpus() + 1


@pytest.mark.model
def test_start_up_runs_every_stage_once_on_a_made_up_photo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.face.registry import build_pipeline

    pipeline = build_pipeline(Settings())
    ran: list[str] = []
    for owner, name in (
        (pipeline.detector, "_quick"),
        (pipeline.encoder, "align"),
        (pipeline.encoder, "encode"),
    ):
        real = getattr(owner, name)
        monkeypatch.setattr(
            owner, name, lambda *a, _r=real, _n=name, **k: ran.append(_n) or _r(*a, **k)
        )
    face = pipeline.warm()
    assert face.chip is not None and face.chip.shape == (150, 150, 3)
    assert {"_quick", "align", "encode"} <= set(ran)
    assert ran.count("encode") == 2  # a batch as a verify makes, and as a compare


@pytest.mark.model
def test_a_cached_form_with_a_matching_record_but_other_bytes_is_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For the dlib release the form was checked on, the bytes must be the known ones:
    a record rewritten to match edited bytes (a header field making dlib allocate
    without bound, or a detector that finds nothing) does not get them loaded."""
    import hashlib
    import json

    _counted_builds(monkeypatch)
    prime_frontal(dlib, tmp_path)
    saved, record = frontal_cache_files(dlib, tmp_path)
    assert dlib.__version__ in hog.KNOWN_FRONTAL_SHA256
    good = saved.read_bytes()
    edited = good[:-10] + bytes(10)
    saved.write_bytes(edited)
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "sha256": hashlib.sha256(edited).hexdigest()}))
    built = _counted_builds(monkeypatch)
    assert prime_frontal(dlib, tmp_path) == "built" and len(built) == 1
    assert saved.read_bytes() == good


@pytest.mark.model
def test_a_form_dlib_refuses_to_load_falls_back_to_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever dlib raises loading a form (std::bad_alloc comes as MemoryError), the
    detector is built from its text instead: a start never fails on the cache."""
    _counted_builds(monkeypatch)
    prime_frontal(dlib, tmp_path)

    def refuses(*args: object) -> object:
        raise MemoryError("std::bad_alloc")

    built = _counted_builds(monkeypatch)
    monkeypatch.setattr(hog, "load_saved", refuses)
    assert prime_frontal(dlib, tmp_path) == "built" and len(built) == 1
