"""`faceverify-client enroll DIR` against a real server (issue 28): the folder layout
and report of `faceverify enroll DIR`, refusals counted by code, and a re-run that
enrolls nothing twice."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, KEY
from faceverify_client import Client

pytestmark = pytest.mark.model

CLI = str(Path(sys.executable).with_name("faceverify-client"))


def test_a_folder_is_enrolled_over_http_and_a_rerun_doubles_nothing(
    server: str, tmp_path: Path
) -> None:
    folder = tmp_path / "people"
    for subject, photos in {
        "bulk-obama": ["obama.jpg", "obama2.jpg"],
        "bulk-biden": ["biden.jpg"],
        "bulk-nobody": ["coffee.png"],
        # A refused first photo leaves the next one to create the subject.
        "bulk-pair": ["two_people.jpg", "biden.jpg"],
    }.items():
        (folder / subject).mkdir(parents=True)
        for photo in photos:
            shutil.copy(DATA / photo, folder / subject / photo)
    report = tmp_path / "refused.csv"
    args = [CLI, "enroll", str(folder), "--url", server, "--key", KEY, "--report", str(report)]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(
        "4 enrolled, 0 already there, 2 refused (multiple_faces 1, no_face 1)"
    ), first.stdout
    # The report of `faceverify enroll DIR`: its columns, each refused photo's path.
    lines = report.read_text().splitlines()
    assert lines[0] == "path,subject_id,status,code,detail"
    assert any(str(folder / "bulk-nobody" / "coffee.png") in line for line in lines)
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.stdout.startswith("0 enrolled, 4 already there, 2 refused"), again.stdout
    with Client(server, api_key=KEY) as fv:
        assert len(fv.get_subject("bulk-obama").faces) == 2
        assert len(fv.get_subject("bulk-biden").faces) == 1
        # A lost state file: the server's idempotency records answer again, nothing doubles.
        (folder / ".faceverify-client-state.jsonl").unlink()
        third = subprocess.run(args, capture_output=True, text=True)
        assert third.stdout.startswith("4 enrolled"), third.stdout
        assert len(fv.get_subject("bulk-obama").faces) == 2
        assert len(fv.get_subject("bulk-pair").faces) == 1
    wrong = subprocess.run(
        [CLI, "enroll", str(folder), "--url", server, "--key", "wrong"],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "unauthorized" in wrong.stderr
    nowhere = subprocess.run([*args, "--collection", "nowhere"], capture_output=True, text=True)
    assert nowhere.returncode == 2 and "collection_not_found" in nowhere.stderr
