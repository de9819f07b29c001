"""`faceverify enroll DIR` (issue 12): /enroll's rules photo by photo, refused photos
reported with their codes, and a re-run doubles nothing."""

from __future__ import annotations

import csv
from pathlib import Path

from app.bulk import enroll_folder, write_report
from app.face.views import recipe_of
from app.service import FaceService
from app.settings import Settings
from tests.fakes import face, fake_image
from tests.helpers import fake_service as make_fake_service
from tests.helpers import parts


def folder(root: Path) -> Path:
    photos = {
        "ann": [fake_image(face(1)), fake_image(face(1, noise=0.1))],
        "bob": [fake_image(), fake_image(face(2))],  # the first has no face
        "cy": [fake_image(face(3)), fake_image(face(4))],  # the second is someone else
        "empty": [],
    }
    for subject, images in photos.items():
        (root / subject).mkdir(parents=True)
        for number, image in enumerate(images):
            (root / subject / f"{number}.png").write_bytes(image)
    (root / "ann" / "notes.txt").write_text("not a photo")
    return root


def test_a_folder_is_enrolled_with_enrolls_rules_and_a_rerun_doubles_nothing(
    fake_service: FaceService, tmp_path: Path
) -> None:
    root = folder(tmp_path / "photos")
    first = enroll_folder(fake_service, root, collection="default", workers=2)
    status = {(Path(o.path).parent.name, Path(o.path).name): (o.status, o.code) for o in first}
    assert status == {
        ("ann", "0.png"): ("enrolled", ""),
        ("ann", "1.png"): ("enrolled", ""),
        ("bob", "0.png"): ("refused", "no_face"),
        ("bob", "1.png"): ("enrolled", ""),
        ("cy", "0.png"): ("enrolled", ""),
        ("cy", "1.png"): ("refused", "face_mismatch"),
    }
    again = enroll_folder(fake_service, root, collection="default", workers=2)
    assert sorted(o.status for o in again) == ["refused", "refused"] + ["skipped"] * 4
    faces = {
        s: fake_service.get_subject(collection="default", subject_id=s)[0].face_count
        for s in ("ann", "bob", "cy")
    }
    assert faces == {"ann": 2, "bob": 1, "cy": 1}
    report = tmp_path / "refused.csv"
    write_report(report, again)
    with report.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["subject_id"], r["code"]) for r in rows] == [
        ("bob", "no_face"),
        ("cy", "face_mismatch"),
    ]


def test_upgrade_replaces_faces_of_an_older_recipe_with_templates(
    settings: Settings, tmp_path: Path
) -> None:
    root = folder(tmp_path / "photos")
    before = make_fake_service(settings.model_copy(update={"template_views": 2}))
    enroll_folder(before, root, collection="default", workers=2)
    after = make_fake_service(settings.model_copy(update={"template_views": 8}))
    outcomes = enroll_folder(after, root, collection="default", workers=2, upgrade=True)
    replaced = sorted((o.subject_id, o.detail) for o in outcomes if o.status == "replaced")
    assert replaced == [("ann", "fast"), ("ann", "fast"), ("bob", "fast"), ("cy", "fast")]
    for subject, count in (("ann", 2), ("bob", 1), ("cy", 1)):
        _, faces = after.get_subject(collection="default", subject_id=subject)
        assert [recipe_of(f.pipeline_version) for f in faces] == ["views8"] * count
    # Without --upgrade the older faces stay; with nothing enrolled they stay too.
    again = enroll_folder(after, root, collection="default", workers=2, upgrade=True)
    assert not [o for o in again if o.status == "replaced"]


def test_a_folder_is_not_trusted_links_devices_fifos_and_huge_files_are_refused(
    settings: Settings, tmp_path: Path
) -> None:
    """Issue 25: links out of the folder were followed (a linked subject folder and
    /etc/hostname were read), x.jpg -> /dev/zero read until MemoryError and aborted the
    run, and a FIFO hung it. Only regular files inside, each under the upload cap; one bad
    file never aborts the run."""
    import os
    import threading

    service = make_fake_service(settings.model_copy(update={"max_upload_bytes": 50_000}))
    root = folder(tmp_path / "photos")
    outside = tmp_path / "outside"
    (outside / "eve").mkdir(parents=True)
    (outside / "eve" / "0.png").write_bytes(fake_image(face(5)))
    (root / "eve").symlink_to(outside / "eve")  # a subject folder linked out
    (root / "ann" / "2.jpg").symlink_to("/etc/hostname")
    (root / "ann" / "3.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "ann" / "4.jpg")
    (root / "cy" / "9.png").write_bytes(b"\x89PNG" + bytes(60_000))  # over the cap

    outcomes: list = []
    worker = threading.Thread(
        target=lambda: outcomes.extend(
            enroll_folder(
                service,
                root,
                collection="default",
                workers=2,
                max_bytes=parts(service).settings.max_upload_bytes,
            )
        )
    )
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the run hung"
    status = {(Path(o.path).parent.name, Path(o.path).name): (o.status, o.code) for o in outcomes}
    assert status[("photos", "eve")] == ("refused", "not_a_regular_file")
    assert status[("ann", "2.jpg")] == ("refused", "not_a_regular_file")
    assert status[("ann", "3.jpg")] == ("refused", "not_a_regular_file")
    assert status[("ann", "4.jpg")] == ("refused", "not_a_regular_file")
    assert status[("cy", "9.png")] == ("refused", "file_too_large")
    assert status[("ann", "0.png")] == ("enrolled", "")  # the rest went on
    names = [s.id for s in service.list_subjects(collection="default", offset=0, limit=10)[0]]
    assert "eve" not in names


def test_the_cli_prints_refusals_by_code(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = folder(tmp_path / "photos")
    env = {**__import__("os").environ, "FACEVERIFY_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("faceverify")), "enroll", str(root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # The real models find no face in the fake photos: the count by code says so.
    assert "6 refused (no_face 6)" in done.stdout
