"""Gallery files: embeddings in and out, for migrations and bulk loads.

Two formats, chosen by the file's extension:

    .jsonl  one face a line: {"subject_id": "...", "embedding": [128 floats], "name": ...}
    .npz    arrays subject_ids (str, N) and embeddings (float32, N x dim), optional names

face_recognition's 128-d encodings come from the same dlib network, so a face_recognition
gallery moves in as a .npz (np.savez(f, subject_ids=names, embeddings=encodings)); an
export from SQLite imports into PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.gallery.models import SUBJECT_ID_MAX, SUBJECT_ID_PATTERN

# The API's rule for subject ids, without its Unicode checks (app/api/schemas.py): the
# ids of a file must at least be ids the API can address.
_SUBJECT_ID = re.compile(SUBJECT_ID_PATTERN)


class GalleryFileError(ValueError):
    """A file that cannot be imported, with where: nothing of it was stored."""


@dataclass
class GalleryFile:
    subject_ids: list[str]
    embeddings: np.ndarray  # (N, dim) float32
    names: list[str | None]


def read_gallery_file(path: Path, *, dim: int) -> GalleryFile:
    """Read and check a whole file: every embedding ``dim`` finite floats, every subject
    id addressable. Raises GalleryFileError naming the line (or row) at fault."""
    if path.suffix == ".npz":
        return _read_npz(path, dim)
    if path.suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, dim)
    raise GalleryFileError(f"{path}: the file must end in .jsonl or .npz")


def _read_jsonl(path: Path, dim: int) -> GalleryFile:
    subject_ids: list[str] = []
    names: list[str | None] = []
    rows: list[list[float]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                subject, embedding = record["subject_id"], record["embedding"]
            except (ValueError, KeyError, TypeError) as exc:
                raise GalleryFileError(
                    f"{path}:{number}: not a JSON object with subject_id and embedding ({exc})"
                ) from exc
            _check(path, str(number), subject, embedding, dim)
            name = record.get("name")
            subject_ids.append(subject)
            names.append(str(name) if name is not None else None)
            rows.append(embedding)
    matrix = np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)
    return GalleryFile(subject_ids, matrix, names)


def _read_npz(path: Path, dim: int) -> GalleryFile:
    try:
        with np.load(path, allow_pickle=False) as data:
            subject_ids = [str(s) for s in data["subject_ids"]]
            embeddings = np.asarray(data["embeddings"])
            names = [str(n) or None for n in data["names"]] if "names" in data else None
    except (OSError, ValueError, KeyError) as exc:
        raise GalleryFileError(
            f"{path}: not an .npz with subject_ids and embeddings arrays ({exc})"
        ) from exc
    if embeddings.ndim != 2 or embeddings.shape != (len(subject_ids), dim):
        raise GalleryFileError(
            f"{path}: embeddings are {embeddings.shape}; expected ({len(subject_ids)}, {dim})"
        )
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise GalleryFileError(f"{path}: row {int(bad[0])}: the embedding is not finite")
    for row, subject in enumerate(subject_ids):
        if not _valid_subject(subject):
            raise GalleryFileError(f"{path}: row {row}: {subject!r} is not a subject id")
    return GalleryFile(
        subject_ids, embeddings.astype(np.float32), names or [None] * len(subject_ids)
    )


def _valid_subject(subject: str) -> bool:
    return len(subject) <= SUBJECT_ID_MAX and bool(_SUBJECT_ID.match(subject))


def _check(path: Path, where: str, subject: object, embedding: object, dim: int) -> None:
    if not isinstance(subject, str) or not _valid_subject(subject):
        raise GalleryFileError(f"{path}:{where}: {subject!r} is not a subject id")
    if not isinstance(embedding, list) or len(embedding) != dim:
        size = len(embedding) if isinstance(embedding, list) else type(embedding).__name__
        raise GalleryFileError(f"{path}:{where}: the embedding has {size} values, not {dim}")
    if not all(isinstance(v, int | float) and np.isfinite(v) for v in embedding):
        raise GalleryFileError(f"{path}:{where}: the embedding holds a non-number or NaN")


def write_gallery_file(
    path: Path,
    *,
    subject_ids: list[str],
    face_ids: list[str],
    names: list[str | None],
    embeddings: np.ndarray,
) -> None:
    """Write an export in the format of the extension (readable by the import)."""
    if path.suffix == ".npz":
        np.savez(
            path,
            subject_ids=np.asarray(subject_ids, dtype=str),
            face_ids=np.asarray(face_ids, dtype=str),
            names=np.asarray([n or "" for n in names], dtype=str),
            embeddings=np.asarray(embeddings, dtype=np.float32),
        )
        return
    if path.suffix not in (".jsonl", ".ndjson"):
        raise GalleryFileError(f"{path}: the file must end in .jsonl or .npz")
    with path.open("w", encoding="utf-8") as fh:
        for line in _lines(subject_ids, face_ids, names, embeddings):
            fh.write(line)


def _lines(
    subject_ids: list[str], face_ids: list[str], names: list[str | None], embeddings: np.ndarray
) -> Iterator[str]:
    for subject, face_id, name, vector in zip(
        subject_ids, face_ids, names, embeddings, strict=True
    ):
        record = {
            "subject_id": subject,
            "face_id": face_id,
            "name": name,
            "embedding": [float(v) for v in vector],
        }
        yield json.dumps(record) + "\n"
