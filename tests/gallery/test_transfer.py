"""Gallery import and export (issue 12): all or nothing per file, errors with the line,
a running process sees an import, and a round trip keeps every embedding exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.gallery import Gallery
from app.gallery.transfer import GalleryFileError, read_gallery_file
from app.settings import Settings
from tests.fakes import face, fake_image, unit_vector
from tests.helpers import fake_service

FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACEVERIFY_DATA_DIR": str(data_dir)}
    return subprocess.run([FACEVERIFY, *args], capture_output=True, text=True, timeout=120, env=env)


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_an_import_is_searched_at_once_by_a_running_process(
    settings: Settings, tmp_path: Path
) -> None:
    # Another process, already serving; imports store the model's name (dlib_resnet_v1),
    # which the fake encoder stands in for here.
    running = fake_service(settings, also_compatible=frozenset({"dlib_resnet_v1"}))
    try:
        assert running.identify(collection="default", image=fake_image(face(5))).best is None
        records = [
            {"subject_id": f"p{seed}", "embedding": unit_vector(seed).tolist(), "name": f"P{seed}"}
            for seed in range(5, 9)
        ]
        done = cli(
            "gallery", "import", str(jsonl(tmp_path / "in.jsonl", records)), data_dir=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert "imported 4 faces (4 new subjects)" in done.stdout
        best = running.identify(collection="default", image=fake_image(face(6))).best
        assert best is not None and best.subject_id == "p6" and best.result.distance < 1e-6
        got = running.verify(collection="default", subject_id="p7", image=fake_image(face(7)))
        assert got.result.match
        assert running.get_subject(collection="default", subject_id="p5")[0].name == "P5"
    finally:
        running.close()


def test_a_bad_line_stores_nothing_and_is_named(tmp_path: Path) -> None:
    good = {"subject_id": "a", "embedding": [0.1] * 128}
    for bad, says in (
        ({"subject_id": "b", "embedding": [0.1] * 127}, "127 values, not 128"),
        ({"subject_id": "b", "embedding": [0.1] * 127 + ["x"]}, "non-number"),
        ({"subject_id": "b/c", "embedding": [0.1] * 128}, "characters a subject id may not"),
        ({"embedding": [0.1] * 128}, "subject_id"),
    ):
        path = jsonl(tmp_path / "bad.jsonl", [good, good, bad])
        done = cli("gallery", "import", str(path), data_dir=tmp_path)
        assert done.returncode == 2 and ":3:" in done.stderr and says in done.stderr
    nan = tmp_path / "nan.jsonl"
    nan.write_text(
        json.dumps(good) + '\n{"subject_id": "b", "embedding": [NaN' + ", 0" * 127 + "]}\n"
    )
    with pytest.raises(GalleryFileError, match=":2: the embedding is not finite"):
        read_gallery_file(nan, dim=128)
    store = Gallery.open(f"sqlite:///{tmp_path / 'faceverify.db'}")
    assert store.collections.all()[0].faces == 0  # nothing of any file was stored
    store.close()


@pytest.mark.slow
def test_export_then_import_keeps_every_embedding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    embeddings = (rng.normal(size=(50, 128)) / np.sqrt(128)).astype(np.float32)  # norm ~1
    subjects = np.asarray([f"s{i // 2}" for i in range(50)])
    np.savez(tmp_path / "in.npz", subject_ids=subjects, embeddings=embeddings)
    assert (
        cli(
            "gallery", "import", str(tmp_path / "in.npz"), "--collection", "door", data_dir=tmp_path
        ).returncode
        == 0
    )
    for suffix in (".npz", ".jsonl"):
        out = tmp_path / f"out{suffix}"
        assert (
            cli("gallery", "export", str(out), "--collection", "door", data_dir=tmp_path).returncode
            == 0
        )
        back = read_gallery_file(out, dim=128)
        order = np.lexsort((back.embeddings[:, 0], np.asarray(back.subject_ids)))
        want = np.lexsort((embeddings[:, 0], subjects))
        assert [back.subject_ids[i] for i in order] == [str(subjects[i]) for i in want]
        assert np.array_equal(back.embeddings[order], embeddings[want])  # bit for bit
    bad = tmp_path / "bad.npz"
    embeddings[7, 3] = np.nan
    np.savez(bad, subject_ids=subjects, embeddings=embeddings)
    done = cli("gallery", "import", str(bad), data_dir=tmp_path)
    assert done.returncode == 2 and "row 7" in done.stderr


# ---- issue 25, item 5: the import checks what the API checks, in bounded memory ------
GOOD = [0.05] * 128  # norm 0.57


@pytest.mark.parametrize(
    ("subject", "says"),
    [
        ("obаma", "several scripts"),  # a Cyrillic "а"
        ("ＡＢＣ", "not in NFKC form"),  # full-width: the API addresses it as "ABC"
        ("alice\n", "characters a subject id may not"),
        ("..", "dots only"),
        ("a\u3164b", "not in NFKC form"),  # an invisible Hangul filler
        ("x" * 129, "1 to 128 characters"),
        (7, "is a string"),
    ],
)
def test_an_import_refuses_subject_ids_the_api_refuses(
    tmp_path: Path, subject: object, says: str
) -> None:
    path = jsonl(
        tmp_path / "g.jsonl",
        [{"subject_id": "ok", "embedding": GOOD}] * 2
        + [{"subject_id": subject, "embedding": GOOD}],
    )
    with pytest.raises(GalleryFileError, match=f":3: .*{says}"):
        read_gallery_file(path, dim=128)
    ids = np.asarray(["ok", "ok", subject if isinstance(subject, str) else "7"])
    if isinstance(subject, str) and subject != "x" * 129:
        np.savez(tmp_path / "g.npz", subject_ids=ids, embeddings=np.full((3, 128), 0.05))
        with pytest.raises(GalleryFileError, match=f"row 2: .*{says}"):
            read_gallery_file(tmp_path / "g.npz", dim=128)


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({"subject_id": "a", "embedding": GOOD, "name": "n" * 257}, "at most 256"),
        ({"subject_id": "a", "embedding": [True] * 128}, "non-number"),
        ({"subject_id": "a", "embedding": [3e38] * 128}, "norm"),
        ({"subject_id": "a", "embedding": [0] * 128}, "norm is 0"),
        ({"subject_id": "a", "embedding": GOOD, "name": 5}, "is a string"),
    ],
)
def test_an_import_refuses_names_and_values_the_api_would_not_hold(
    tmp_path: Path, record: dict, says: str
) -> None:
    path = jsonl(tmp_path / "g.jsonl", [{"subject_id": "ok", "embedding": GOOD}, record])
    with pytest.raises(GalleryFileError, match=f":2: .*{says}"):
        read_gallery_file(path, dim=128)


def test_huge_vectors_are_refused_in_an_npz_too(tmp_path: Path) -> None:
    """Finite rows of 3e38 were stored, then /verify answered 500 (an overflow)."""
    embeddings = np.full((3, 128), 0.05, dtype=np.float32)
    embeddings[1] = 3e38
    np.savez(tmp_path / "g.npz", subject_ids=np.asarray(["a", "b", "c"]), embeddings=embeddings)
    with pytest.raises(GalleryFileError, match="row 1: the embedding's norm is 3.39e\\+39"):
        read_gallery_file(tmp_path / "g.npz", dim=128)


def test_a_line_longer_than_any_face_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"subject_id": "a", "name": "' + "n" * 5_000_000 + '", "embedding": []}\n')
    with pytest.raises(GalleryFileError, match=":1: the line is longer than 65536 bytes"):
        read_gallery_file(path, dim=128)


def _rss_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_small_hostile_npz_files_are_refused_before_they_take_memory(tmp_path: Path) -> None:
    """A 2 MB .npz zip bomb reached 2.0 GB of memory; 1.5 MB of <U100000000 ids 2.4 GB;
    a header claiming 10^12 rows raised MemoryError."""
    import io
    import zipfile

    def npz(path: Path, members: dict[str, bytes]) -> Path:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, raw in members.items():
                zf.writestr(f"{name}.npy", raw)
        return path

    def npy(array: np.ndarray) -> bytes:
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()

    def header_only(shape: tuple[int, ...], dtype: str) -> bytes:
        out = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            out, {"descr": dtype, "fortran_order": False, "shape": shape}
        )
        return out.getvalue()

    before = _rss_peak_mb()
    ids = npy(np.asarray(["a"] * 40_000))
    bomb = npz(
        tmp_path / "bomb.npz",
        {"subject_ids": ids, "embeddings": npy(np.full((40_000, 128), 0.05, np.float32))},
    )
    with pytest.raises(GalleryFileError, match="compress .*-fold"):
        read_gallery_file(bomb, dim=128)
    claims = npz(
        tmp_path / "claims.npz",
        {"subject_ids": ids, "embeddings": header_only((10**12, 128), "<f4")},
    )
    with pytest.raises(GalleryFileError, match="its header claims"):
        read_gallery_file(claims, dim=128)
    wide = npz(
        tmp_path / "wide.npz",
        {
            "subject_ids": header_only((2,), "<U100000000"),
            "embeddings": npy(np.full((2, 128), 0.05, np.float32)),
        },
    )
    with pytest.raises(GalleryFileError):
        read_gallery_file(wide, dim=128)
    assert _rss_peak_mb() - before < 100


def test_a_jsonl_import_keeps_rows_compact(tmp_path: Path) -> None:
    """~6.6 KB of memory a row before (Python lists of floats): now a float32 matrix."""
    rows = 20_000
    path = tmp_path / "g.jsonl"
    with path.open("w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"subject_id": f"s{i}", "embedding": GOOD}) + "\n")
    before = _rss_peak_mb()
    read = read_gallery_file(path, dim=128)
    assert len(read.subject_ids) == rows and read.embeddings.dtype == np.float32
    assert (_rss_peak_mb() - before) * 1024 * 1024 / rows < 2000  # bytes a row, at most
