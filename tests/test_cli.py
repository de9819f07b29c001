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
