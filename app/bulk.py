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
import os
import stat
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from app.errors import FaceVerifyError, SubjectNotFound, error_code
from app.face.views import recipe_of
from app.gallery import Consent
from app.gallery.ids import check_stored_subject_id
from app.privacy.events import AuditDraft, current_audit
from app.service import FaceService
from app.settings import Settings

# The photo size cap's default (FACEVERIFY_MAX_UPLOAD_BYTES).
UPLOAD_CAP: int = Settings.model_fields["max_upload_bytes"].default

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
    """Sub-folder name -> its photos, sorted; folders with no photos are left out. Only
    real folders and regular files inside ``folder``: symbolic links, devices and FIFOs
    are not followed (issue 25: a linked subject folder and /etc/hostname were read,
    x.jpg -> /dev/zero ran out of memory, a FIFO hung the run); :func:`passed_over`
    lists them."""
    found = {}
    for sub in sorted(p for p in folder.iterdir() if _is(p, stat.S_ISDIR)):
        photos = sorted(p for p in sub.iterdir() if _photo_name(p) and _is(p, stat.S_ISREG))
        if photos:
            found[sub.name] = photos
    return found


def passed_over(folder: Path) -> list[PhotoOutcome]:
    """What :func:`subjects_in` does not enroll and why: links, devices, FIFOs."""
    outcomes = []
    for sub in sorted(folder.iterdir()):
        if sub.is_symlink():
            outcomes.append(_not_regular(sub, sub.name, "a symbolic link (not followed)"))
        elif _is(sub, stat.S_ISDIR):
            for p in sorted(sub.iterdir()):
                if _photo_name(p) and not _is(p, stat.S_ISREG):
                    kind = "a symbolic link (not followed)" if p.is_symlink() else "not a file"
                    outcomes.append(_not_regular(p, sub.name, kind))
    return outcomes


def _not_regular(path: Path, subject_id: str, why: str) -> PhotoOutcome:
    return PhotoOutcome(str(path), subject_id, "refused", "not_a_regular_file", f"{path}: {why}")


def _photo_name(path: Path) -> bool:
    return path.suffix.lower() in PHOTO_SUFFIXES


def _is(path: Path, kind: Callable[[int], bool]) -> bool:
    """The entry itself (never what a link points to) is of ``kind``."""
    try:
        return kind(path.lstat().st_mode)
    except OSError:
        return False


class UnreadablePhoto(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def read_photo(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most ``max_bytes`` (the upload cap): opened without
    following a link and without blocking (a FIFO swapped in after the listing), then
    checked to be a regular file before anything is read."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnreadablePhoto("unreadable", f"{path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadablePhoto("not_a_regular_file", f"{path}: not a regular file")
        if info.st_size > max_bytes:
            raise UnreadablePhoto(
                "file_too_large", f"{path}: {info.st_size} bytes; the cap is {max_bytes}"
            )
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadablePhoto("file_too_large", f"{path}: more than {max_bytes} bytes")
    return data


def enroll_folder(
    service: FaceService,
    folder: Path,
    *,
    collection: str,
    workers: int,
    progress: Callable[[int], None] | None = None,
    upgrade: bool = False,
    consent: Consent | None = None,
    max_bytes: int = UPLOAD_CAP,
) -> list[PhotoOutcome]:
    """``max_bytes``: the largest photo read (FACEVERIFY_MAX_UPLOAD_BYTES)."""
    subjects = subjects_in(folder)
    current = service.names().template
    audited = service.audit_trail() is not None

    def one_subject(item: tuple[str, list[Path]]) -> list[PhotoOutcome]:
        subject_id, photos = item
        try:  # a folder name the API could not address is no subject id (issue 37)
            check_stored_subject_id(subject_id)
        except ValueError as exc:
            why = f"the folder name is not a subject id the API can address: {exc}"
            return [
                PhotoOutcome(str(p), subject_id, "refused", "invalid_subject_id", why)
                for p in photos
            ]
        try:
            service.get_subject(collection=collection, subject_id=subject_id)
            exists = True
        except SubjectNotFound:
            exists = False
        outcomes = []
        for photo in photos:
            # Each stored photo's event goes in with its faces (the trail on).
            if audited:
                current_audit.set(
                    AuditDraft("enroll", request_id="cli", success_status=0, client="cli")
                )
            try:
                result = service.enroll(
                    collection=collection,
                    subject_id=subject_id,
                    images=[read_photo(photo, max_bytes)],
                    add=exists,
                    skip_known=True,
                    consent=consent,
                )
                exists = True
                status = "enrolled" if result.faces else "skipped"
                outcomes.append(PhotoOutcome(str(photo), subject_id, status))
            except FaceVerifyError as exc:
                code = error_code(exc)
                outcomes.append(PhotoOutcome(str(photo), subject_id, "refused", code, exc.detail))
            except UnreadablePhoto as exc:
                outcomes.append(
                    PhotoOutcome(str(photo), subject_id, "refused", exc.code, exc.detail)
                )
            except Exception as exc:  # one bad file never aborts the run; it is reported
                detail = f"{type(exc).__name__}: {exc}"
                outcomes.append(PhotoOutcome(str(photo), subject_id, "refused", "error", detail))
            if progress:
                progress(1)
        if upgrade:
            outcomes += _replace_older(service, collection, subject_id, current)
        return outcomes

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = [o for batch in pool.map(one_subject, subjects.items()) for o in batch]
    return passed_over(folder) + done


def refusals_by_code(outcomes: list[PhotoOutcome]) -> dict[str, int]:
    """How many photos were refused for each code, most first."""
    counts = Counter(o.code for o in outcomes if o.status == "refused")
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


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
