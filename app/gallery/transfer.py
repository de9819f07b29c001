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
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.gallery.ids import NAME_MAX, check_name, check_stored_subject_id
from app.gallery.models import SUBJECT_ID_MAX

T = TypeVar("T")

# The longest line a .jsonl may have: a 128-d embedding is ~3 KB of JSON, a name at most
# NAME_MAX characters; a longer line is refused before it is parsed.
MAX_LINE_BYTES = 64 * 1024
# Faces one import may hold (~600 B of memory each while it is checked and stored).
MAX_ROWS = 20_000_000
# dlib's embeddings have a norm of about 1 (tests/face/test_models.py); past this a file
# is not embeddings of any model we serve, and its squared distances near float32's range
# overflowed to inf, which made /verify answer 500 (issue 25: rows of 3e38).
MAX_EMBEDDING_NORM = 4.0
# ... and no face gives a vector of (nearly) zeros.
MIN_EMBEDDING_NORM = 0.1
# Rows checked at a time while an .npz is read.
CHUNK_ROWS = 65_536
# An .npz member of embeddings that compresses more than this is not float embeddings
# (they compress ~10%): a zip bomb, refused before it is inflated (issue 25: 2 MB reached
# 2 GB of memory).
MAX_EMBEDDING_RATIO = 8


class GalleryFileError(ValueError):
    """A file that cannot be imported, with where: nothing of it was stored."""


@dataclass
class GalleryFile:
    subject_ids: list[str]
    embeddings: np.ndarray  # (N, dim) float32
    names: list[str | None]


def read_gallery_file(path: Path, *, dim: int) -> GalleryFile:
    """Read and check a whole file with the API's rules for every row: subject ids the
    API would store as they are (app/gallery/ids.py), names of at most NAME_MAX
    characters, embeddings of ``dim`` finite numbers (no booleans) of a plausible norm.
    Memory follows the file's real content, never what its headers claim: a .jsonl is
    read a line at a time into a float32 matrix, an .npz member at a time after its
    header is checked. Raises GalleryFileError naming the line (or row) at fault."""
    if path.suffix == ".npz":
        return _read_npz(path, dim)
    if path.suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, dim)
    raise GalleryFileError(f"{path}: the file must end in .jsonl or .npz")


class _Rows:
    """A growing float32 matrix (and its ids and names): ~600 B a face, not the ~6.6 KB
    of Python lists of floats."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.matrix = np.empty((capacity, dim), dtype=np.float32)
        self.subject_ids: list[str] = []
        self.names: list[str | None] = []

    def add(self, subject: str, vector: np.ndarray, name: str | None) -> None:
        n = len(self.subject_ids)
        if n == len(self.matrix):
            grown = np.empty((2 * n, self.matrix.shape[1]), dtype=np.float32)
            grown[:n] = self.matrix
            self.matrix = grown
        self.matrix[n] = vector
        self.subject_ids.append(subject)
        self.names.append(name)

    def done(self) -> GalleryFile:
        n = len(self.subject_ids)
        return GalleryFile(self.subject_ids, self.matrix[:n].copy(), self.names)


def _read_jsonl(path: Path, dim: int) -> GalleryFile:
    rows = _Rows(dim)
    with path.open("rb") as fh:
        number = 0
        while line := fh.readline(MAX_LINE_BYTES + 1):
            number += 1
            where = f"{path}:{number}"
            if len(line) > MAX_LINE_BYTES:
                raise GalleryFileError(f"{where}: the line is longer than {MAX_LINE_BYTES} bytes")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                subject, embedding = record["subject_id"], record["embedding"]
            except (ValueError, KeyError, TypeError) as exc:
                raise GalleryFileError(
                    f"{where}: not a JSON object with subject_id and embedding ({exc})"
                ) from exc
            if len(rows.subject_ids) >= MAX_ROWS:
                raise GalleryFileError(f"{where}: more than {MAX_ROWS} faces in one file")
            name = _checked(where, check_name, record.get("name"))
            rows.add(
                _checked(where, check_stored_subject_id, subject),
                _vector(where, embedding, dim),
                name,
            )
    return rows.done()


def _checked(where: str, check: Callable[[object], T], value: object) -> T:
    try:
        return check(value)
    except ValueError as exc:
        raise GalleryFileError(f"{where}: {exc}") from exc


def _vector(where: str, embedding: object, dim: int) -> np.ndarray:
    if not isinstance(embedding, list) or len(embedding) != dim:
        size = len(embedding) if isinstance(embedding, list) else type(embedding).__name__
        raise GalleryFileError(f"{where}: the embedding has {size} values, not {dim}")
    # bool is an int to Python: true/false are not embedding values.
    if not all(type(v) in (int, float) for v in embedding):
        raise GalleryFileError(f"{where}: the embedding holds a non-number")
    vector = np.asarray(embedding, dtype=np.float64)
    _check_vectors(where, vector[None])
    return vector


def _check_vectors(where: str, vectors: np.ndarray, first_row: int | None = None) -> None:
    """Finite rows of a plausible norm; ``where`` names the file, and the row is
    ``first_row`` + its index when given."""
    finite = np.isfinite(vectors).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    bad = np.flatnonzero(~finite | ~((norms >= MIN_EMBEDDING_NORM) & (norms <= MAX_EMBEDDING_NORM)))
    if not len(bad):
        return
    i = int(bad[0])
    at = where if first_row is None else f"{where}: row {first_row + i}"
    if not finite[i]:
        raise GalleryFileError(f"{at}: the embedding is not finite")
    raise GalleryFileError(
        f"{at}: the embedding's norm is {norms[i]:.3g}; embeddings have a norm of about 1 "
        f"({MIN_EMBEDDING_NORM:g} to {MAX_EMBEDDING_NORM:g} is accepted)"
    )


@dataclass
class _Member:
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    offset: int  # bytes of the .npy header


def _member(zf: zipfile.ZipFile, path: Path, name: str) -> _Member | None:
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        return None
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise GalleryFileError(f"{path}: {name}: not a numpy array ({exc})") from exc
    if fortran or dtype.hasobject:
        raise GalleryFileError(f"{path}: {name}: must be a plain C-ordered array")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != expected:
        raise GalleryFileError(
            f"{path}: {name}: its header claims {shape} of {dtype} ({expected} bytes), the "
            f"archive holds {info.file_size}"
        )
    return _Member(info, tuple(shape), dtype, offset)


def _read_npz(path: Path, dim: int) -> GalleryFile:
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise GalleryFileError(f"{path}: not an .npz archive ({exc})") from exc
    with zf:
        ids, vectors = _member(zf, path, "subject_ids"), _member(zf, path, "embeddings")
        names = _member(zf, path, "names")
        if ids is None or vectors is None:
            raise GalleryFileError(f"{path}: not an .npz with subject_ids and embeddings arrays")
        n = _embeddings_member(path, vectors, dim)
        _text_member(path, "subject_ids", ids, n, SUBJECT_ID_MAX)
        if names is not None:
            _text_member(path, "names", names, n, NAME_MAX)
        matrix = np.empty((n, dim), dtype=np.float32)
        for start, chunk in _chunks(zf, vectors, dim):
            _check_vectors(str(path), chunk, first_row=start)
            matrix[start : start + len(chunk)] = chunk
        subject_ids = [
            _checked(f"{path}: row {start + i}", check_stored_subject_id, str(value))
            for start, chunk in _chunks(zf, ids, 1)
            for i, value in enumerate(chunk.ravel())
        ]
        names_out: list[str | None] = (
            [
                _checked(f"{path}: row {start + i}", check_name, str(value) or None)
                for start, chunk in _chunks(zf, names, 1)
                for i, value in enumerate(chunk.ravel())
            ]
            if names is not None
            else [None] * n
        )
    return GalleryFile(subject_ids, matrix, names_out)


def _embeddings_member(path: Path, vectors: _Member, dim: int) -> int:
    """How many rows the embeddings member holds, if it is one an import takes."""
    n = vectors.shape[0] if len(vectors.shape) == 2 else -1
    if len(vectors.shape) != 2 or vectors.shape[1] != dim or vectors.dtype.kind != "f":
        raise GalleryFileError(
            f"{path}: embeddings are {vectors.shape} of {vectors.dtype}; expected (N, {dim}) floats"
        )
    if n > MAX_ROWS:
        raise GalleryFileError(f"{path}: {n} faces; one import holds at most {MAX_ROWS}")
    info = vectors.info
    if info.compress_type != zipfile.ZIP_STORED and (
        info.file_size > MAX_EMBEDDING_RATIO * max(info.compress_size, 1) + (1 << 20)
    ):
        raise GalleryFileError(
            f"{path}: embeddings compress {info.file_size / max(info.compress_size, 1):.0f}"
            "-fold; float embeddings do not (a zip bomb?)"
        )
    return int(n)


def _text_member(path: Path, name: str, member: _Member, n: int, longest: int) -> None:
    if member.shape != (n,) or member.dtype.kind != "U" or member.dtype.itemsize > 4 * longest:
        raise GalleryFileError(
            f"{path}: {name} is {member.shape} of {member.dtype}; expected ({n},) strings of "
            f"at most {longest} characters (<U{longest})"
        )


def _chunks(zf: zipfile.ZipFile, member: _Member, width: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of a member, CHUNK_ROWS at a time, as decompressed."""
    row_bytes = member.dtype.itemsize * width
    with zf.open(member.info) as fh:
        fh.read(member.offset)
        start = 0
        while chunk := fh.read(CHUNK_ROWS * row_bytes):
            rows = np.frombuffer(chunk, dtype=member.dtype).reshape(-1, width)
            yield start, rows
            start += len(rows)


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
