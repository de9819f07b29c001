"""The privacy work from the command line (issue 27), with the real models: a folder
enrolled with consent where the collection requires it, one person's export, and an
erasure that leaves nothing in the data folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.gallery import Gallery
from tests.helpers import DATA, collections
from tests.privacy.test_erasure import files_holding

pytestmark = pytest.mark.model

FACEVERIFY = str(Path(sys.executable).with_name("faceverify"))


@pytest.mark.slow
def test_consent_export_and_erasure_from_the_cli(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"FACEVERIFY_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FACEVERIFY, *args], env=env, capture_output=True, text=True)

    folder = tmp_path / "people"
    for person, photo in (("obama", "obama.jpg"), ("biden", "biden.jpg")):
        (folder / person).mkdir(parents=True)
        shutil.copy(DATA / photo, folder / person / photo)
    assert cli("db", "upgrade").returncode == 0
    store = Gallery.connect(f"sqlite:///{data_dir / 'faceverify.db'}")
    collections(store).create(collection="door", consent_required=True)
    refused = cli("enroll", str(folder), "--collection", "door")
    assert "0 enrolled" in refused.stdout and "consent_required 2" in refused.stdout, refused
    done = cli(
        "enroll",
        str(folder),
        "--collection",
        "door",
        "--consent-reference",
        "badge-form-v2",
        "--consent-given-at",
        "2026-12-01T09:00:00Z",
    )
    assert "2 enrolled" in done.stdout, done.stdout + done.stderr

    out = cli("subjects", "export", "obama", "-", "--collection", "door", "--include-embeddings")
    exported = json.loads(out.stdout)
    assert exported["subject"]["consent"]["reference"] == "badge-form-v2"
    assert [e["action"] for e in exported["audit_events"]] == ["enroll"]
    (face,) = exported["faces"]
    assert len(face["embedding"]) == 128
    stored = next(iter(store.subjects.face_bytes(collection="door", subject_id="obama").values()))
    assert files_holding(data_dir, stored)

    gone = cli("subjects", "delete", "obama", "--collection", "door")
    assert gone.returncode == 0 and "deleted obama (1 faces)" in gone.stdout
    assert files_holding(data_dir, stored) == []
    missing = cli("subjects", "export", "obama", "-", "--collection", "door")
    assert missing.returncode == 2 and "No subject with id 'obama'" in missing.stderr
    trail = cli("audit", "export", "-").stdout.splitlines()
    actions = [json.loads(line)["action"] for line in trail]
    assert actions.count("enroll") == 2 and "export_subject" in actions
    assert actions[-2:] == ["export_subject", "delete_subject"]  # a failed export read nothing
    assert cli("audit", "verify").returncode == 0
    store.close()
