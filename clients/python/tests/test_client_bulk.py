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


def test_the_state_is_per_server_and_collection_and_another_key_stores_nothing_twice(
    server: str, tmp_path: Path
) -> None:
    """Issue 37, item 11: the same folder sent to another collection was told "already
    there"; with the state file lost and another key, every photo was stored twice."""
    folder = tmp_path / "people"
    (folder / "state-obama").mkdir(parents=True)
    shutil.copy(DATA / "obama.jpg", folder / "state-obama" / "obama.jpg")
    shutil.copy(DATA / "obama2.jpg", folder / "state-obama" / "obama2.jpg")
    with Client(server, api_key=KEY) as fv:
        fv.create_collection("state-a")
        fv.create_collection("state-b", consent_required=True)
        other = fv.create_key("second", ["enroll", "verify"], collection="state-a").key
    base = [CLI, "enroll", str(folder), "--url", server]
    first = subprocess.run([*base, "--key", KEY, "--collection", "state-a"], capture_output=True,
                           text=True)  # fmt: skip
    assert first.stdout.startswith("2 enrolled"), first.stdout + first.stderr
    refused = subprocess.run([*base, "--key", KEY, "--collection", "state-b"],
                             capture_output=True, text=True)  # fmt: skip
    assert refused.stdout.startswith("0 enrolled, 0 already there, 2 refused (consent_required 2)")
    elsewhere = subprocess.run(
        [*base, "--key", KEY, "--collection", "state-b", "--consent-reference", "form-v2"],
        capture_output=True,
        text=True,
    )
    assert elsewhere.stdout.startswith("2 enrolled, 0 already there"), elsewhere.stdout
    # The state file lost (and a torn line in a new one), another key of the collection:
    state = folder / ".faceverify-client-state.jsonl"
    state.write_text('{"photo": "state-obama/obama.jpg", "sha')
    again = subprocess.run([*base, "--key", other, "--collection", "state-a"],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0 and "1 lines" in again.stderr, again.stderr
    with Client(server, api_key=KEY) as fv:
        assert len(fv.get_subject("state-obama", collection="state-a").faces) == 2
        assert len(fv.get_subject("state-obama", collection="state-b").faces) == 2
        consent = fv.get_subject("state-obama", collection="state-b").consent
        assert consent is not None and consent["reference"] == "form-v2"
