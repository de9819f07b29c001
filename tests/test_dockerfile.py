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
