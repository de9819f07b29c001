"""Vector indexes: where enrolled embeddings are searched, 1:1 and 1:N.

:class:`VectorIndex` is what the service needs from one; :class:`ExactIndex` (a float32
matrix, exact search) is the first implementation. An index holds the embeddings of one
encoder model only (app/face/encoder.py): the service never compares models. The store
is the truth and an index is a cache of it; :class:`app.vectors.sync.GallerySync`
replays the store's change log into any VectorIndex, so a new index (an ANN one) is a new
class here and nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from app.scoring.distance import distances, squared_norms


@dataclass(frozen=True)
class SubjectHit:
    subject_id: str
    face_id: str
    distance: float


# How many faces near the query a search keeps for :meth:`VectorIndex.rescore`.
SHORTLIST = 256


class Hits(list[SubjectHit]):
    """A search's answer, nearest first, and what it looked at: ``shortlist`` (faces
    near the query, in the index's own terms) lets :meth:`VectorIndex.rescore` answer a
    query close to this one without searching again."""

    def __init__(self, hits: Iterable[SubjectHit] = (), shortlist: Any = None) -> None:
        super().__init__(hits)
        self.shortlist = shortlist


class VectorIndex(Protocol):
    """Embeddings by face id, grouped by subject. Every method is thread-safe."""

    dim: int

    def __len__(self) -> int: ...

    @property
    def subject_count(self) -> int: ...

    def nbytes(self) -> int:
        """Memory the vectors take."""
        ...

    def add(self, face_ids: list[str], subject_ids: list[str], vectors: np.ndarray) -> None:
        """Add faces; an id already present is replaced (so replaying is harmless)."""
        ...

    def remove_faces(self, face_ids: list[str]) -> None:
        """Remove faces by id; unknown ids are ignored."""
        ...

    def remove_subject(self, subject_id: str) -> None: ...

    def clear(self) -> None: ...

    def subject_faces(self, subject_id: str) -> list[str]:
        """The subject's face ids, sorted; empty if it has none here."""
        ...

    def subject_embeddings(self, subject_id: str) -> np.ndarray:
        """``(n, dim)`` copies of the subject's embeddings (n may be 0)."""
        ...

    def best_for_subject(self, subject_id: str, query: np.ndarray) -> SubjectHit | None:
        """The subject's face closest to ``query``, or None if it has no faces."""
        ...

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> Hits:
        """The ``k`` subjects with the closest faces to ``query`` (each subject's best
        face), nearest first; the face ``exclude`` is left out (a search by a stored
        face does not find that face itself)."""
        ...

    def rescore(
        self, query: np.ndarray, previous: Hits, k: int, exclude: str | None = None
    ) -> list[SubjectHit]:
        """:meth:`search` for a ``query`` within a few hundredths of the one that gave
        ``previous`` (the same photo's mirror-averaged embedding), answered from the
        faces that search looked at (its ``SHORTLIST`` nearest), with exact distances;
        an index that cannot, or whose rows changed meanwhile, searches again."""
        ...


class ExactIndex:
    """A :class:`VectorIndex` searched exactly. Rows of a growing matrix; deleting moves
    the last row into the hole, so the live rows are always ``matrix[:size]`` and a search
    is one matrix-vector product."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._matrix = np.zeros((0, self.dim), dtype=np.float32)
        self._sq = np.zeros(0, dtype=np.float32)
        self._size = 0
        self._face_ids: list[str] = []
        self._subject_of_row: list[str] = []
        self._row_of_face: dict[str, int] = {}
        self._faces_of_subject: dict[str, set[str]] = {}

    # ---- size ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    @property
    def subject_count(self) -> int:
        return len(self._faces_of_subject)

    def nbytes(self) -> int:
        return int(self._matrix.nbytes + self._sq.nbytes)

    # ---- writes --------------------------------------------------------------------
    def add(self, face_ids: list[str], subject_ids: list[str], vectors: np.ndarray) -> None:
        """Add faces (ids already present are replaced, so replaying is harmless)."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(face_ids) != len(subject_ids) or len(face_ids) != len(vectors):
            raise ValueError("one subject id and one vector per face id")
        with self._lock:
            if self._row_of_face:
                for face_id in self._row_of_face.keys() & set(face_ids):
                    self._remove_row(face_id)
            self._reserve(self._size + len(face_ids))
            start = self._size
            self._matrix[start : start + len(face_ids)] = vectors
            self._sq[start : start + len(face_ids)] = squared_norms(vectors)
            self._face_ids.extend(face_ids)
            self._subject_of_row.extend(subject_ids)
            self._row_of_face.update(
                zip(face_ids, range(start, start + len(face_ids)), strict=True)
            )
            faces_of = self._faces_of_subject
            for face_id, subject_id in zip(face_ids, subject_ids, strict=True):
                found = faces_of.get(subject_id)
                if found is None:
                    faces_of[subject_id] = {face_id}
                else:
                    found.add(face_id)
            self._size += len(face_ids)

    def remove_faces(self, face_ids: list[str]) -> None:
        with self._lock:
            for face_id in face_ids:
                if face_id in self._row_of_face:
                    self._remove_row(face_id)

    def remove_subject(self, subject_id: str) -> None:
        with self._lock:
            for face_id in list(self._faces_of_subject.get(subject_id, ())):
                self._remove_row(face_id)
            self._faces_of_subject.pop(subject_id, None)

    def _remove_row(self, face_id: str) -> None:
        row = self._row_of_face.pop(face_id)
        subject_id = self._subject_of_row[row]
        faces = self._faces_of_subject.get(subject_id)
        if faces is not None:
            faces.discard(face_id)
            if not faces:
                del self._faces_of_subject[subject_id]
        last = self._size - 1
        if row != last:
            self._matrix[row] = self._matrix[last]
            self._sq[row] = self._sq[last]
            moved = self._face_ids[last]
            self._face_ids[row] = moved
            self._subject_of_row[row] = self._subject_of_row[last]
            self._row_of_face[moved] = row
        self._face_ids.pop()
        self._subject_of_row.pop()
        self._matrix[last] = 0.0
        self._sq[last] = 0.0
        self._size = last

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._matrix):
            return
        # Headroom: a bulk load leaves a quarter spare, so the first enroll after start
        # does not copy the whole matrix (issue 12: 0.45-1.4 s at 1M faces).
        capacity = max(rows + rows // 4, 2 * len(self._matrix), 1024)
        matrix = np.zeros((capacity, self.dim), dtype=np.float32)
        matrix[: self._size] = self._matrix[: self._size]
        sq = np.zeros(capacity, dtype=np.float32)
        sq[: self._size] = self._sq[: self._size]
        self._matrix, self._sq = matrix, sq

    # ---- search --------------------------------------------------------------------
    def subject_faces(self, subject_id: str) -> list[str]:
        """The subject's face ids, sorted."""
        with self._lock:
            return sorted(self._faces_of_subject.get(subject_id, ()))

    def subject_embeddings(self, subject_id: str) -> np.ndarray:
        """``(n, dim)`` copies of the subject's enrolled embeddings (n may be 0)."""
        with self._lock:
            rows = sorted(self._row_of_face[f] for f in self._faces_of_subject.get(subject_id, ()))
            return self._matrix[rows].copy()

    def best_for_subject(self, subject_id: str, query: np.ndarray) -> SubjectHit | None:
        """The subject's face closest to ``query``, or None if it has no faces."""
        with self._lock:
            rows = [self._row_of_face[f] for f in self._faces_of_subject.get(subject_id, ())]
            if not rows:
                return None
            index = np.asarray(rows)
            d = distances(query, self._matrix[index], self._sq[index])
            best = int(np.argmin(d))
            return SubjectHit(subject_id, self._face_ids[rows[best]], float(d[best]))

    def rescore(
        self, query: np.ndarray, previous: Hits, k: int, exclude: str | None = None
    ) -> list[SubjectHit]:
        """Exact search is cheap at the sizes this index is used for: search again."""
        return self.search(query, k, exclude)

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> Hits:
        """The ``k`` subjects with the closest faces to ``query`` (each subject's best
        face), nearest first, without the face ``exclude``."""
        with self._lock:
            n = self._size
            if n == 0 or k <= 0:
                return Hits()
            d = distances(query, self._matrix[:n], self._sq[:n])
            if exclude is not None and exclude in self._row_of_face:
                d[self._row_of_face[exclude]] = np.inf
                if n == 1:
                    return Hits()
            subject_of_row = self._subject_of_row
            face_ids = self._face_ids
            # Look at the nearest few rows first; widen only if they hold < k subjects.
            m = min(n, 8 * k)
            while True:
                rows = np.argpartition(d, m - 1)[:m] if m < n else np.arange(n)
                rows = rows[np.argsort(d[rows], kind="stable")]
                hits = Hits()
                seen: set[str] = set()
                for row in rows:
                    if d[row] == np.inf:
                        return hits  # only the excluded face is left (rows are sorted)
                    subject_id = subject_of_row[row]
                    if subject_id in seen:
                        continue
                    seen.add(subject_id)
                    hits.append(SubjectHit(subject_id, face_ids[row], float(d[row])))
                    if len(hits) == k:
                        return hits
                if m >= n:
                    return hits
                m = min(n, 4 * m)


class Partitions:
    """One :class:`VectorIndex` per collection, so a search costs its own collection's
    size and can never return another collection's faces. Thread-safe."""

    def __init__(self, dim: int, factory: Callable[[int], VectorIndex] = ExactIndex) -> None:
        self.dim = dim
        self._factory = factory
        self._lock = threading.Lock()
        self._parts: dict[str, VectorIndex] = {}
        # Counts the swaps (put, replace, clear): a writer that read it before applying a change
        # knows whether the change went to indexes still in use.
        self.epoch = 0

    def get(self, collection: str) -> VectorIndex:
        """The collection's index to read (an empty one if it has no faces here)."""
        with self._lock:
            found = self._parts.get(collection)
        return found if found is not None else self._factory(self.dim)

    def writable(self, collection: str) -> VectorIndex:
        """The collection's index to add to, made on first use."""
        with self._lock:
            if collection not in self._parts:
                self._parts[collection] = self._factory(self.dim)
            return self._parts[collection]

    def drop(self, collection: str) -> None:
        with self._lock:
            self._parts.pop(collection, None)

    def fresh(self) -> VectorIndex:
        """A new, empty index of the kind this holds (filled before :meth:`put`)."""
        return self._factory(self.dim)

    def put(self, collection: str, index: VectorIndex) -> None:
        """Swap in one collection's index, leaving the others as they are."""
        with self._lock:
            self._parts[collection] = index
            self.epoch += 1

    def clear(self) -> None:
        with self._lock:
            self._parts.clear()
            self.epoch += 1

    def parts(self) -> dict[str, VectorIndex]:
        with self._lock:
            return dict(self._parts)

    def like(self, parts: dict[str, VectorIndex]) -> Partitions:
        """New partitions of the same kind holding ``parts``."""
        other = Partitions(self.dim, self._factory)
        other.replace(parts)
        return other

    def replace(self, parts: dict[str, VectorIndex]) -> None:
        """Swap in a whole new set of indexes (opened from a snapshot)."""
        with self._lock:
            self._parts = dict(parts)
            self.epoch += 1

    def face_counts(self) -> dict[str, int]:
        """Faces per collection (collections with none are left out)."""
        with self._lock:
            parts = list(self._parts.items())
        return {name: len(index) for name, index in parts if len(index)}

    def subject_counts(self) -> dict[str, int]:
        with self._lock:
            parts = list(self._parts.items())
        return {name: index.subject_count for name, index in parts if len(index)}

    def __len__(self) -> int:
        return sum(self.face_counts().values())
