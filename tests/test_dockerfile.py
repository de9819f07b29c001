"""The image cannot be built here, so its steps must be the ones the tests exercise."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_installs_and_starts_like_make_run() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    # Install: the same editable install `make run` does (tests run on the same layout).
    assert re.search(r"RUN pip install -e \.", dockerfile)
    assert "pip install --quiet -e ." in makefile
    # Start: the console script test_serve.py starts, with settings from FACEVERIFY_* env.
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert cmd and json.loads(cmd.group(1)) == ["faceverify", "serve"]
    assert "$(BIN)/faceverify serve" in makefile
    # It copies everything the service reads at start-up.
    for path in ("pyproject.toml", "app", "models"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.MULTILINE), path


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
