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
