"""In-memory float32 matrix of every enrolled embedding, for 1:1 and 1:N search.

The store is the truth; this is a cache of it, kept in step by :meth:`EmbeddingIndex.sync`
(which replays the store's change log) and by the service after its own writes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from app.gallery.store import GalleryStore
from app.scoring.distance import distances, squared_norms

DIM = 128


@dataclass(frozen=True)
class SubjectHit:
    subject_id: str
    face_id: str
    distance: float


class EmbeddingIndex:
    """Rows of a growing matrix; deleting moves the last row into the hole, so the live
    rows are always ``matrix[:size]`` and a search is one matrix-vector product."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._reset()
        self.version = -1

    def _reset(self) -> None:
        self._matrix = np.zeros((0, DIM), dtype=np.float32)
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
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, DIM)
        with self._lock:
            for face_id in face_ids:
                if face_id in self._row_of_face:
                    self._remove_row(face_id)
            self._reserve(self._size + len(face_ids))
            start = self._size
            self._matrix[start : start + len(face_ids)] = vectors
            self._sq[start : start + len(face_ids)] = squared_norms(vectors)
            for offset, (face_id, subject_id) in enumerate(zip(face_ids, subject_ids, strict=True)):
                row = start + offset
                self._face_ids.append(face_id)
                self._subject_of_row.append(subject_id)
                self._row_of_face[face_id] = row
                self._faces_of_subject.setdefault(subject_id, set()).add(face_id)
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
        capacity = max(rows, 2 * len(self._matrix), 1024)
        matrix = np.zeros((capacity, DIM), dtype=np.float32)
        matrix[: self._size] = self._matrix[: self._size]
        sq = np.zeros(capacity, dtype=np.float32)
        sq[: self._size] = self._sq[: self._size]
        self._matrix, self._sq = matrix, sq

    # ---- keeping in step with the store ----------------------------------------------
    def sync(self, store: GalleryStore) -> bool:
        """Bring the index up to the store's version. Cheap when nothing changed (one
        query). Returns True if anything was applied."""
        current = store.version()
        if current == self.version:
            return False
        with self._lock:
            if current == self.version:
                return False
            changes = store.changes_since(version=self.version) if self.version >= 0 else None
            if changes is None:
                rows = store.load_embeddings()
                self._reset()
                self.add(rows.face_ids, rows.subject_ids, rows.matrix)
                self.version = current
                return True
            added = [c.face_id for c in changes if c.kind == "add_face" and c.face_id]
            fetched = store.load_embeddings(face_ids=added) if added else None
            vectors = (
                {fid: i for i, fid in enumerate(fetched.face_ids)} if fetched is not None else {}
            )
            for change in changes:
                if change.kind == "add_face" and change.face_id in vectors and fetched:
                    i = vectors[change.face_id]
                    self.add([change.face_id], [change.subject_id], fetched.matrix[i : i + 1])
                elif change.kind == "delete_face" and change.face_id:
                    self.remove_faces([change.face_id])
                elif change.kind == "delete_subject":
                    self.remove_subject(change.subject_id)
            self.version = max([current, *(c.version for c in changes)])
            return True

    def advance(self, version: int) -> None:
        """Record that this process applied its own write of ``version`` itself, when it
        was the next one; otherwise leave the gap for :meth:`sync` to replay."""
        with self._lock:
            if version == self.version + 1:
                self.version = version

    # ---- search --------------------------------------------------------------------
    def subject_faces(self, subject_id: str) -> list[str]:
        with self._lock:
            return sorted(self._faces_of_subject.get(subject_id, ()))

    def subject_embeddings(self, subject_id: str) -> np.ndarray:
        """``(n, 128)`` copies of the subject's enrolled embeddings (n may be 0)."""
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

    def top_subjects(self, query: np.ndarray, k: int) -> list[SubjectHit]:
        """The ``k`` subjects with the closest faces to ``query`` (each subject's best
        face), nearest first."""
        with self._lock:
            n = self._size
            if n == 0 or k <= 0:
                return []
            d = distances(query, self._matrix[:n], self._sq[:n])
            subject_of_row = self._subject_of_row
            face_ids = self._face_ids
            # Look at the nearest few rows first; widen only if they hold < k subjects.
            m = min(n, 8 * k)
            while True:
                rows = np.argpartition(d, m - 1)[:m] if m < n else np.arange(n)
                rows = rows[np.argsort(d[rows], kind="stable")]
                hits: list[SubjectHit] = []
                seen: set[str] = set()
                for row in rows:
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
