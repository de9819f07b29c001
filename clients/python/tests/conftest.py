"""A real faceverify server for the client's tests (the real models, a fresh data
folder), shared by the module's tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The server's repository: its test helpers start a real `faceverify serve`.
ROOT = Path(__file__).resolve().parents[3]
if (ROOT / "tests" / "server.py").exists() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SERVER = pytest.importorskip("tests.server", reason="runs in the server's repository")
KEY = pytest.importorskip("tests.helpers").TEST_KEY
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("client-server")
    with SERVER.serving({"FACEVERIFY_DATA_DIR": str(folder)}) as url:
        yield url


@pytest.fixture
def photo() -> object:
    return lambda name: DATA / name
