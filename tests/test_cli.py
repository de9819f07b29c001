"""The model commands the Dockerfile runs at build time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FACEVERIFY, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


def test_models_check_and_prepare(tmp_path: Path) -> None:
    env = {"FACEVERIFY_CACHE_DIR": str(tmp_path / "cache")}
    check = run("models", "check", env=env)
    assert check.returncode == 0 and check.stdout.count("ok ") == 4  # with yunet, bundled
    prepare = run("models", "prepare", env=env)
    assert prepare.returncode == 0, prepare.stderr
    assert list((tmp_path / "cache").glob("dlib_resnet_v1-*.onnx"))
    # dlib's frontal detector in its saved form, so a start loads it in ~2 ms (issue 41):
    # the image's server, another user, reads it.
    (saved,) = (tmp_path / "cache").glob("dlib_frontal_face_detector-*.svm")
    assert saved.stat().st_mode & 0o777 == 0o644


def test_db_upgrade(tmp_path: Path) -> None:
    done = run("db", "upgrade", env={"FACEVERIFY_DATA_DIR": str(tmp_path)})
    assert done.returncode == 0 and "revision 0009" in done.stdout
    bad = run(
        "db", "upgrade", env={"FACEVERIFY_DATABASE_URL": "postgresql+psycopg://x:y@127.0.0.1:1/z"}
    )
    assert bad.returncode == 2 and "faceverify:" in bad.stderr


def test_reading_commands_never_migrate_the_database(tmp_path: Path) -> None:
    """`keys list` on a database faceverify never opened says so and creates nothing;
    only the writing commands (keys create, db upgrade, serve) migrate (issue 10)."""
    from sqlalchemy import create_engine, inspect

    env = {"FACEVERIFY_DATA_DIR": str(tmp_path)}
    listed = run("keys", "list", env=env)
    assert listed.returncode == 2 and "db upgrade" in listed.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'faceverify.db'}")
    assert inspect(engine).get_table_names() == []
    created = run("keys", "create", "--scope", "verify", "--name", "kiosk", env=env)
    assert created.returncode == 0, created.stderr
    listed = run("keys", "list", env=env)
    assert listed.returncode == 0 and "kiosk" in listed.stdout


def test_gallery_import_leaves_the_snapshot_the_next_start_opens(tmp_path: Path) -> None:
    """Issue 41: a first start after an import read and indexed every face (34 s at 1M);
    the import now saves the registered snapshot a server opens, and a server opens it
    rather than building its own."""
    import numpy as np

    from app.face.registry import encoder_model
    from app.service.build import memory_backend, open_gallery
    from app.settings import Settings
    from app.vectors.snapshot import SnapshotDir

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.savez(tmp_path / "g.npz", subject_ids=[f"s{i}" for i in range(40)], embeddings=vectors)
    env = {
        "FACEVERIFY_DATA_DIR": str(tmp_path),
        "FACEVERIFY_INDEX_SNAPSHOT_MIN_FACES": "10",
    }
    done = run("gallery", "import", str(tmp_path / "g.npz"), env=env)
    assert done.returncode == 0, done.stderr
    assert "index snapshot of version" in done.stdout and "the next start opens it" in done.stdout

    settings = Settings(data_dir=tmp_path, index_snapshot_min_faces=10)
    spec = encoder_model(settings)
    gallery = open_gallery(settings)
    try:
        snapshots = SnapshotDir(
            settings.resolved_index_dir(), min_faces=10, exact_below=settings.ann_exact_below
        )
        instance = gallery.changes.instance()
        saved = snapshots.latest(instance, spec.compatible, spec.dim)
        assert saved is not None and saved.version == gallery.changes.version()
        search = memory_backend(
            settings, gallery, dim=spec.dim, encoders=spec.compatible, background=False
        )
        assert search.counts()["faces"] == 40
        # Opened, not rebuilt: a rebuild would have saved a snapshot of its own.
        assert snapshots.latest(instance, spec.compatible, spec.dim) == saved
    finally:
        gallery.close()
    below = run(
        "gallery", "import", str(tmp_path / "g.npz"), "--collection", "other",
        env={"FACEVERIFY_DATA_DIR": str(tmp_path / "small")},
    )  # fmt: skip
    assert below.returncode == 0 and "no index snapshot: 40 faces, under" in below.stdout
