"""`faceverify enroll DIR`: enroll a folder of photos, one sub-folder per subject.

Each photo goes through the same pipeline and rules as POST /enroll (one face, the
minimum size, the same-person check), one photo per enrollment, so one bad photo costs
only itself. Subjects run in parallel on every core (HOG and ONNX Runtime release the
GIL); a subject's photos in order. Safe to re-run after an interruption: a photo whose
face the subject already has is skipped, so nothing is doubled. Every refused photo is
reported with its code.

With ``upgrade``, the photos re-make a gallery enrolled with another template recipe
(faces enrolled before templates, or with another FACEVERIFY_TEMPLATE_VIEWS): once a
subject has a face of the current recipe from its photos, its faces of other recipes
are deleted. faceverify never keeps photos, so a better template needs them again.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from app.api.problems import status_and_code
from app.errors import FaceVerifyError, SubjectNotFound
from app.face.views import recipe_of
from app.service import FaceService

PHOTO_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".bmp", ".gif", ".tif", ".tiff",
    ".ppm", ".pgm",
}  # fmt: skip


@dataclass
class PhotoOutcome:
    path: str
    subject_id: str
    status: str  # enrolled | skipped | refused | replaced (an older face deleted)
    code: str = ""
    detail: str = ""


def subjects_in(folder: Path) -> dict[str, list[Path]]:
    """Sub-folder name -> its photos, sorted; folders with no photos are left out."""
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = sorted(p for p in sub.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
        if photos:
            found[sub.name] = photos
    return found


def enroll_folder(
    service: FaceService,
    folder: Path,
    *,
    collection: str,
    workers: int,
    progress: Callable[[int], None] | None = None,
    upgrade: bool = False,
) -> list[PhotoOutcome]:
    subjects = subjects_in(folder)
    current = service.pipeline.template

    def one_subject(item: tuple[str, list[Path]]) -> list[PhotoOutcome]:
        subject_id, photos = item
        try:
            service.get_subject(collection=collection, subject_id=subject_id)
            exists = True
        except SubjectNotFound:
            exists = False
        outcomes = []
        for photo in photos:
            try:
                result = service.enroll(
                    collection=collection,
                    subject_id=subject_id,
                    images=[photo.read_bytes()],
                    add=exists,
                    skip_known=True,
                )
                exists = True
                status = "enrolled" if result.faces else "skipped"
                outcomes.append(PhotoOutcome(str(photo), subject_id, status))
            except FaceVerifyError as exc:
                code = status_and_code(exc)[1]
                outcomes.append(PhotoOutcome(str(photo), subject_id, "refused", code, exc.detail))
            except OSError as exc:
                outcomes.append(
                    PhotoOutcome(str(photo), subject_id, "refused", "unreadable", str(exc))
                )
            if progress:
                progress(1)
        if upgrade:
            outcomes += _replace_older(service, collection, subject_id, current)
        return outcomes

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [o for batch in pool.map(one_subject, subjects.items()) for o in batch]


def _replace_older(
    service: FaceService, collection: str, subject_id: str, recipe: str
) -> list[PhotoOutcome]:
    """Delete the subject's faces of other recipes, if it has one of ``recipe``."""
    try:
        _, faces = service.get_subject(collection=collection, subject_id=subject_id)
    except SubjectNotFound:
        return []
    recipes = {f.id: recipe_of(f.pipeline_version) for f in faces}
    if recipe not in recipes.values():
        return []  # none of its photos enrolled: keep what it has
    replaced = []
    for face_id, made_with in recipes.items():
        if made_with != recipe:
            service.delete_face(collection=collection, subject_id=subject_id, face_id=face_id)
            replaced.append(
                PhotoOutcome(f"face {face_id}", subject_id, "replaced", detail=made_with)
            )
    return replaced


def write_report(path: Path, outcomes: list[PhotoOutcome]) -> None:
    """Every photo not enrolled, as CSV or JSON Lines (by the extension)."""
    refused = [o for o in outcomes if o.status == "refused"]
    if path.suffix in (".jsonl", ".ndjson"):
        path.write_text("".join(json.dumps(asdict(o)) + "\n" for o in refused))
        return
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "subject_id", "status", "code", "detail"])
        writer.writeheader()
        writer.writerows(asdict(o) for o in refused)
