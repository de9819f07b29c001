"""A :class:`~app.gallery.index.VectorIndex` for very large collections (issue 12).

Rows live in numpy arrays, not Python objects: the float32 embedding (512 B at 128-d),
the face id as 36 ASCII bytes, a subject number (4 B), a live flag; subject ids are kept
once per subject. Up to ``exact_below`` faces a search is exact over the float32 rows,
with the same arithmetic as :class:`~app.gallery.index.ExactIndex`. Past it, a FAISS
IVF index of 8-bit scalar-quantised codes (128 B a face) picks candidates, and the
candidates are re-ranked exactly on the float32 rows, so every distance returned is the
exact one; only which faces are considered is approximate (recall, measured against the
exact index in tests/gallery/test_ann.py and docs/SCALING.md). About 690 B a face in all.

Deleted rows are marked dead and skipped (no FAISS removal: O(n) per call there); a
full reload rebuilds without them.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from app.gallery.index import SubjectHit
from app.scoring.distance import distances, squared_norms

# Below this many faces a collection is searched exactly (a scan of 1M faces takes ~30 ms
# on one core here; the IVF index answers in a few ms past that).
EXACT_BELOW = 1_000_000
# IVF cells searched per query. 128 of ~4,000 cells keeps recall@1 >= 0.995 on noisy
# multi-face galleries (docs/SCALING.md).
NPROBE = 128
FACE_ID_BYTES = 36
MAX_CELLS = 4096
TRAIN_PER_CELL = 40  # faiss warns below 39 training points a cell


class AnnIndex:
    def __init__(self, dim: int, *, exact_below: int = EXACT_BELOW, nprobe: int = NPROBE):
        self.dim = dim
        self.exact_below = exact_below
        self.nprobe = nprobe
        self._lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._n = 0  # rows used (live and dead)
            self._live_count = 0
            self._vec = np.zeros((0, self.dim), dtype=np.float32)
            self._sq = np.zeros(0, dtype=np.float32)
            self._fid = np.zeros(0, dtype=f"S{FACE_ID_BYTES}")
            self._subj = np.zeros(0, dtype=np.int32)
            self._live = np.zeros(0, dtype=bool)
            self._subject_names: list[str] = []
            self._subject_no: dict[str, int] = {}
            self._ivf: Any = None  # the faiss index, once trained
            self._trained_at = 0

    # ---- size ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live_count

    @property
    def subject_count(self) -> int:
        with self._lock:
            n = self._n
            return len(np.unique(self._subj[:n][self._live[:n]]))

    def nbytes(self) -> int:
        arrays = (self._vec, self._sq, self._fid, self._subj, self._live)
        codes = self._ivf.ntotal * self.dim if self._ivf is not None else 0
        return int(sum(a.nbytes for a in arrays) + codes)

    # ---- writes ----------------------------------------------------------------------
    def add(self, face_ids: list[str], subject_ids: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(face_ids) != len(subject_ids) or len(face_ids) != len(vectors):
            raise ValueError("one subject id and one vector per face id")
        if not face_ids:
            return
        if any(len(f) > FACE_ID_BYTES for f in face_ids):
            raise ValueError(f"face ids are at most {FACE_ID_BYTES} characters (UUIDs)")
        encoded = np.asarray([f.encode("ascii") for f in face_ids], dtype=f"S{FACE_ID_BYTES}")
        with self._lock:
            if self._live_count:
                self._kill(np.flatnonzero(np.isin(self._fid[: self._n], encoded)))
            numbers = np.fromiter(
                (self._number(s) for s in subject_ids), dtype=np.int32, count=len(subject_ids)
            )
            start, end = self._n, self._n + len(face_ids)
            self._reserve(end)
            self._vec[start:end] = vectors
            self._sq[start:end] = squared_norms(vectors)
            self._fid[start:end] = encoded
            self._subj[start:end] = numbers
            self._live[start:end] = True
            self._n = end
            self._live_count += len(face_ids)
            if self._ivf is not None:
                self._ivf.add_with_ids(vectors, np.arange(start, end, dtype=np.int64))
            if self._live_count >= self.exact_below and (
                self._ivf is None or self._live_count > 4 * self._trained_at
            ):
                self._train()

    def remove_faces(self, face_ids: list[str]) -> None:
        encoded = np.asarray([f.encode("ascii") for f in face_ids], dtype=f"S{FACE_ID_BYTES}")
        with self._lock:
            self._kill(np.flatnonzero(np.isin(self._fid[: self._n], encoded)))

    def remove_subject(self, subject_id: str) -> None:
        with self._lock:
            number = self._subject_no.get(subject_id)
            if number is not None:
                self._kill(np.flatnonzero(self._subj[: self._n] == number))

    def _kill(self, rows: np.ndarray) -> None:
        rows = rows[self._live[rows]]
        self._live[rows] = False
        self._live_count -= len(rows)

    def _number(self, subject_id: str) -> int:
        number = self._subject_no.get(subject_id)
        if number is None:
            number = self._subject_no[subject_id] = len(self._subject_names)
            self._subject_names.append(subject_id)
        return number

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._vec):
            return
        capacity = max(rows + rows // 4, 2 * len(self._vec), 1024)

        def grow(a: np.ndarray) -> np.ndarray:
            bigger = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            bigger[: self._n] = a[: self._n]
            return bigger

        self._vec, self._sq, self._fid = grow(self._vec), grow(self._sq), grow(self._fid)
        self._subj, self._live = grow(self._subj), grow(self._live)

    def _train(self) -> None:
        """(Re)build the IVF index over the live rows: ~4 sqrt(n) cells, trained on a
        sample of 40 rows a cell (at most 4,096 cells)."""
        import faiss

        rows = np.flatnonzero(self._live[: self._n])
        # At most 4,096 cells: each added face is compared with every cell centre, so
        # more cells make a 10M build take tens of minutes on 2 cores for little gain.
        nlist = int(min(MAX_CELLS, max(256, 4 * math.sqrt(len(rows)))))
        size = min(len(rows), TRAIN_PER_CELL * nlist)
        sample = np.random.default_rng(0).choice(rows, size=size, replace=False)
        quantizer = faiss.IndexFlatL2(self.dim)
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2
        )
        ivf.cp.niter = 10
        ivf.train(np.ascontiguousarray(self._vec[np.sort(sample)]))
        for start in range(0, len(rows), 262_144):
            chunk = rows[start : start + 262_144]
            ivf.add_with_ids(np.ascontiguousarray(self._vec[chunk]), chunk.astype(np.int64))
        ivf.nprobe = self.nprobe
        self._ivf, self._trained_at = ivf, len(rows)

    # ---- search ----------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> list[SubjectHit]:
        with self._lock:
            if self._live_count == 0 or k <= 0:
                return []
            q = np.asarray(query, dtype=np.float32).reshape(self.dim)
            skip = exclude.encode("ascii") if exclude else None
            if self._ivf is None:
                return self._scan(q, k, skip)
            wanted = max(64, 16 * k)
            while True:
                _, found = self._ivf.search(q[None], min(wanted, self._n))
                rows = found[0][found[0] >= 0]
                rows = rows[self._live[rows]]
                d = distances(q, self._vec[rows], self._sq[rows])
                hits = self._nearest_subjects(rows, d, k, skip)
                if len(hits) >= k or wanted >= self._live_count or wanted >= 65_536:
                    return hits
                wanted *= 4

    def _scan(self, q: np.ndarray, k: int, skip: bytes | None) -> list[SubjectHit]:
        """Exact: distances to every row (no copy of the rows), then the nearest few
        rows first, widening only while they hold fewer than k subjects."""
        n = self._n
        d = distances(q, self._vec[:n], self._sq[:n])
        d[~self._live[:n]] = np.inf
        m = min(n, 8 * k + 1)
        while True:
            rows = np.argpartition(d, m - 1)[:m] if m < n else np.arange(n)
            rows = rows[np.isfinite(d[rows])]
            hits = self._nearest_subjects(rows, d[rows], k, skip)
            if len(hits) >= k or m >= n:
                return hits
            m = min(n, 4 * m)

    def _nearest_subjects(
        self, rows: np.ndarray, d: np.ndarray, k: int, skip: bytes | None
    ) -> list[SubjectHit]:
        """Each subject's nearest face among ``rows`` (exact distances ``d``), nearest
        first, without the face ``skip``."""
        if skip is not None:
            keep = self._fid[rows] != skip
            rows, d = rows[keep], d[keep]
        if not len(rows):
            return []
        order = np.argsort(d, kind="stable")
        subjects = self._subj[rows][order]
        # First occurrence of each subject in distance order: its nearest face.
        _, first = np.unique(subjects, return_index=True)
        best = np.sort(first)[:k]
        return [
            SubjectHit(
                self._subject_names[int(subjects[i])],
                self._fid[rows[order[i]]].decode("ascii"),
                float(d[order[i]]),
            )
            for i in best
        ]

    def subject_faces(self, subject_id: str) -> list[str]:
        return sorted(f.decode("ascii") for f in self._fid[self._subject_rows(subject_id)])

    def subject_embeddings(self, subject_id: str) -> np.ndarray:
        with self._lock:
            rows = self._subject_rows(subject_id)
            order = np.argsort(self._fid[rows])
            return self._vec[rows[order]].copy()

    def best_for_subject(self, subject_id: str, query: np.ndarray) -> SubjectHit | None:
        with self._lock:
            rows = self._subject_rows(subject_id)
            if not len(rows):
                return None
            d = distances(query, self._vec[rows], self._sq[rows])
            best = int(np.argmin(d))
            return SubjectHit(subject_id, self._fid[rows[best]].decode("ascii"), float(d[best]))

    def _subject_rows(self, subject_id: str) -> np.ndarray:
        with self._lock:
            number = self._subject_no.get(subject_id)
            if number is None:
                return np.zeros(0, dtype=np.int64)
            n = self._n
            return np.flatnonzero((self._subj[:n] == number) & self._live[:n])
