"""The image cannot be built here, so its steps must be the ones the tests exercise."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_installs_and_starts_like_make_run() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    # Install: the lock (tests/test_lock.py), then a plain (not editable) install of the
    # package, which carries its model manifest and calibration (test below), then the
    # two model commands test_cli runs.
    assert re.search(
        r"RUN pip install --no-deps --no-build-isolation \. \\\n"
        r"\s+&& faceverify models check \\\n\s+&& faceverify models prepare \\$",
        dockerfile,
        re.MULTILINE,
    )
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in makefile
    # Multi-stage, on the official image unless BASE_IMAGE says otherwise.
    assert "ARG BASE_IMAGE=python:3.11-slim" in dockerfile
    assert dockerfile.count("FROM ${BASE_IMAGE}") == 2
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    # Start: the console script test_serve.py starts, with settings from FACEVERIFY_* env.
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd and json.loads(cmd.group(1)) == ["faceverify", "serve"]
    assert "$(BIN)/faceverify serve" in makefile
    # It copies everything the package is built from.
    for path in ("pyproject.toml", "README.md", "app"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.MULTILINE), path


def test_a_plain_install_carries_the_manifest_and_calibration(tmp_path: Path) -> None:
    """The wheel holds manifest.json and calibration.json as package data, and the
    installed package finds them with no repository beside it (issue 10)."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__"))
    # Built as the Dockerfile builds it: by the locked setuptools, nothing fetched.
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    pip += ["-w", str(tmp_path), "."]
    subprocess.run(pip, cwd=source, check=True, timeout=300)
    (wheel,) = tmp_path.glob("faceverify-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert {"app/models/manifest.json", "app/models/calibration.json"} <= set(
            archive.namelist()
        )
        archive.extractall(installed)
    probe = (
        "from app.settings import Settings; s = Settings(); "
        "print(s.manifest_file().resolve()); print(s.resolved_calibration_file().resolve())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [Path(p) for p in out] == [
        installed.resolve() / "app" / "models" / "manifest.json",
        installed.resolve() / "app" / "models" / "calibration.json",
    ]


def test_compose_runs_the_image_on_postgresql() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["faceverify"]
    env = service["environment"]
    assert env["FACEVERIFY_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["FACEVERIFY_DATABASE_URL"]
    assert ":?" in env["FACEVERIFY_API_KEYS"]  # no default key: compose refuses to start
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pgdata:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]


def test_readme_documents_every_setting() -> None:
    from app.settings import Settings

    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)? \|", readme, re.MULTILINE))
    names = {n for pair in documented for n in pair if n}
    assert names == {f.upper() for f in Settings.model_fields}


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
