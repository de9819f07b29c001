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

from app.gallery.store import GalleryStore
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
        running.store.close()


def test_a_bad_line_stores_nothing_and_is_named(tmp_path: Path) -> None:
    good = {"subject_id": "a", "embedding": [0.1] * 128}
    for bad, says in (
        ({"subject_id": "b", "embedding": [0.1] * 127}, "127 values, not 128"),
        ({"subject_id": "b", "embedding": [0.1] * 127 + ["x"]}, "non-number"),
        ({"subject_id": "b/c", "embedding": [0.1] * 128}, "not a subject id"),
        ({"embedding": [0.1] * 128}, "subject_id"),
    ):
        path = jsonl(tmp_path / "bad.jsonl", [good, good, bad])
        done = cli("gallery", "import", str(path), data_dir=tmp_path)
        assert done.returncode == 2 and ":3:" in done.stderr and says in done.stderr
    nan = tmp_path / "nan.jsonl"
    nan.write_text(
        json.dumps(good) + '\n{"subject_id": "b", "embedding": [NaN' + ", 0" * 127 + "]}\n"
    )
    with pytest.raises(GalleryFileError, match=":2: the embedding holds a non-number or NaN"):
        read_gallery_file(nan, dim=128)
    store = GalleryStore.open(f"sqlite:///{tmp_path / 'faceverify.db'}")
    assert store.list_collections()[0].faces == 0  # nothing of any file was stored
    store.close()


def test_export_then_import_keeps_every_embedding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 128)).astype(np.float32)
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
