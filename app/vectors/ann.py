"""A :class:`~app.vectors.index.VectorIndex` for very large collections (issue 12).

Rows live in numpy arrays, not Python objects: the float32 embedding (512 B at 128-d),
the face id as 36 ASCII bytes, a subject number (4 B), a live flag; subject ids are kept
once per subject. Up to ``exact_below`` faces a search is exact over the float32 rows,
with the same arithmetic as :class:`~app.vectors.index.ExactIndex`. Past it, a FAISS
IVF index of 8-bit scalar-quantised codes (128 B a face) picks candidates, and the
candidates are re-ranked exactly on the float32 rows, so every distance returned is the
exact one; only which faces are considered is approximate (recall, measured against the
exact index in tests/gallery/test_ann.py and docs/SCALING.md). About 690 B a face in all.

Deleted rows are marked dead and skipped (no FAISS removal: O(n) per call there); a
full reload rebuilds without them.

An index can be saved to a folder (:meth:`AnnIndex.save`) and opened from it
(:meth:`AnnIndex.open`) memory-mapped: the rows, the subject names and the IVF lists are
then pages of files that every worker process on the machine shares through the page
cache, not private copies (app/vectors/snapshot.py decides when). Writes after opening
stay private: changed pages are copied on write, new faces go into a small IVF of their
own next to the shared one.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from app.scoring.distance import distances, squared_norms
from app.vectors.index import SHORTLIST, Hits, SubjectHit

# Below this many faces a collection is searched exactly (a scan of 1M faces takes ~30 ms
# on one core here; the IVF index answers in a few ms past that).
EXACT_BELOW = 1_000_000
# IVF cells searched per query. On 10M faces shaped like real embeddings (4,096 cells;
# benchmarks/synthetic.py), 300 stored faces as probes against exact search: 128 gave
# recall@1 0.943, 256 0.99 (16 ms p50), 512 1.0 at 31 / 37 ms p50 / p95 (docs/SCALING.md).
NPROBE = 512
FACE_ID_BYTES = 36
MAX_CELLS = 4096
TRAIN_PER_CELL = 40  # faiss warns below 39 training points a cell
SAVE_SLICE = 262_144  # rows written (and added to the saved IVF) at a time

_GENERATIONS = itertools.count(1)

log = logging.getLogger("faceverify.gallery")


def _save_column(
    path: Path,
    name: str,
    values: np.ndarray,
    rows: np.ndarray,
    capacity: int,
    renumber: np.ndarray,
) -> None:
    """One column of the live ``rows`` into a .npy file of ``capacity`` rows (subject
    numbers renumbered to the sorted names, every saved row live)."""
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=values.dtype, shape=(capacity, *values.shape[1:])
    )
    # In slices: no second copy of the rows in memory at 10M faces.
    for start in range(0, len(rows), SAVE_SLICE):
        picked = rows[start : start + SAVE_SLICE]
        if name == "subj":
            out[start : start + len(picked)] = renumber[values[picked]]
        elif name == "live":
            out[start : start + len(picked)] = True
        else:
            out[start : start + len(picked)] = values[picked]
    out.flush()
    del out


def _save_ivf(
    folder: Path, ivf: Any, template: Any, vec: np.ndarray, rows: np.ndarray, n: int
) -> bool:
    """The IVF index's empty copy (``template``, trained) and, with the live ``rows``
    renumbered, its lists; whether there was one to save. ``ivf`` (from
    :meth:`AnnIndex._freeze_ivf`) takes no adds meanwhile."""
    import faiss

    if ivf is None:
        return False
    empty = faiss.clone_index(template)
    faiss.write_index(empty, str(folder / "ivf-empty.faiss"))
    if ivf.ntotal == n == len(rows):
        # Its lists hold every row below n, none dead: written as they are.
        faiss.write_index(ivf, str(folder / "ivf.faiss"))
        return True
    # Row numbers change (dead rows are left out), or ``ivf`` is an empty copy: the
    # lists are built with the trained cell centres, no new training.
    for start in range(0, len(rows), SAVE_SLICE):
        picked = rows[start : start + SAVE_SLICE]
        empty.add_with_ids(
            np.ascontiguousarray(vec[picked]),
            np.arange(start, start + len(picked), dtype=np.int64),
        )
    faiss.write_index(empty, str(folder / "ivf.faiss"))
    return True


class AnnIndex:
    def __init__(self, dim: int, *, exact_below: int = EXACT_BELOW, nprobe: int = NPROBE):
        self.dim = dim
        self.exact_below = exact_below
        self.nprobe = nprobe
        self._lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            # Rows are numbered afresh after a clear: a shortlist of row numbers from
            # before it means nothing (rescore checks).
            # (numbered across every index, so another index's shortlist never matches).
            self._generation = next(_GENERATIONS)
            self._n = 0  # rows used (live and dead)
            self._live_count = 0
            # Live faces per subject number, and how many numbers have any.
            self._faces_per_subject = np.zeros(0, dtype=np.int32)
            self._live_subjects = 0
            self._vec = np.zeros((0, self.dim), dtype=np.float32)
            self._sq = np.zeros(0, dtype=np.float32)
            self._fid = np.zeros(0, dtype=f"S{FACE_ID_BYTES}")
            self._subj = np.zeros(0, dtype=np.int32)
            self._live = np.zeros(0, dtype=bool)
            self._subjects = _Subjects()
            # FAISS IVF indexes, once trained: all are searched; adds go to the last.
            # One private index, or a shared read-only one and a private one for adds.
            self._ivfs: list[Any] = []
            # An empty copy of the trained IVF index (no lists), cloned for saves: cloning
            # a filled one copies its lists (1.4 GB at 10M faces).
            self._ivf_template: Any = None
            self._trained_at = 0
            # The thread building the IVF index, while one does (see _train_if_due).
            self._training: threading.Thread | None = getattr(self, "_training", None)

    # ---- size ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._live_count

    @property
    def subject_count(self) -> int:
        """Subjects with a live face: kept as faces come and go (every identify asks, and
        counting 1M rows took ~50 ms)."""
        return self._live_subjects

    def nbytes(self) -> int:
        arrays = (self._vec, self._sq, self._fid, self._subj, self._live)
        codes = sum(ivf.ntotal for ivf in self._ivfs) * self.dim
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
                (self._subjects.number(s) for s in subject_ids),
                dtype=np.int32,
                count=len(subject_ids),
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
            self._count_subjects(numbers, +1)
            if self._ivfs:
                self._ivfs[-1].add_with_ids(vectors, np.arange(start, end, dtype=np.int64))
            self._train_if_due()

    def remove_faces(self, face_ids: list[str]) -> None:
        encoded = np.asarray([f.encode("ascii") for f in face_ids], dtype=f"S{FACE_ID_BYTES}")
        with self._lock:
            self._kill(np.flatnonzero(np.isin(self._fid[: self._n], encoded)))

    def remove_subject(self, subject_id: str) -> None:
        with self._lock:
            number = self._subjects.find(subject_id)
            if number is not None:
                self._kill(np.flatnonzero(self._subj[: self._n] == number))

    def _kill(self, rows: np.ndarray) -> None:
        rows = rows[self._live[rows]]
        self._live[rows] = False
        self._live_count -= len(rows)
        self._count_subjects(self._subj[rows], -1)

    def _count_subjects(self, numbers: np.ndarray, sign: int) -> None:
        """Faces of these subject numbers came (+1) or went (-1)."""
        if not len(numbers):
            return
        top = int(numbers.max()) + 1
        if top > len(self._faces_per_subject):
            grown = np.zeros(max(top, 2 * len(self._faces_per_subject)), dtype=np.int32)
            grown[: len(self._faces_per_subject)] = self._faces_per_subject
            self._faces_per_subject = grown
        counts = self._faces_per_subject
        if len(numbers) * 8 >= top:
            # A large batch (a load, a snapshot opened): one pass of bincount, not a
            # sort of every number (np.unique took 0.3 s of a 1M-face snapshot's open).
            delta = np.bincount(numbers, minlength=top).astype(np.int32) * sign
            before = int(np.count_nonzero(counts[:top]))
            counts[:top] += delta
            self._live_subjects += int(np.count_nonzero(counts[:top])) - before
            return
        touched = np.unique(numbers)
        had = counts[touched] > 0
        np.add.at(counts, numbers, sign)
        has = counts[touched] > 0
        self._live_subjects += int(has.sum()) - int(had.sum())

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

    def _train_if_due(self) -> None:
        """Start (re)building the IVF index on a thread of its own once the collection
        reaches ``exact_below`` faces (and again at 4x the size it was built for). Until
        it is built, searches scan every row: exact, ~30 ms at 1M faces, where building
        takes ~25 s (issue 25: identify answered 503 for 27.6 s after importing 1M faces
        while the index trained in the request's path)."""
        due = self._live_count >= self.exact_below and (
            not self._ivfs or self._live_count > 4 * self._trained_at
        )
        if due and self._training is None:
            self._training = threading.Thread(
                target=self._train_in_background, name="ann-train", daemon=True
            )
            self._training.start()

    def wait_trained(self, timeout: float | None = None) -> bool:
        """Wait for a build in progress (tests; saving a snapshot). True when none is."""
        training = self._training
        if training is not None:
            training.join(timeout)
        return self._training is None

    def _train_in_background(self) -> None:
        with self._lock:
            generation, vec, n = self._generation, self._vec, self._n
            rows = np.flatnonzero(self._live[:n])
        try:
            # Rows below n never change once written (deletes only clear live flags, and
            # growing copies into a new array), so the build reads them without the lock.
            ivf, template = self._build(vec, rows)
        except Exception:  # pragma: no cover - FAISS out of memory, say: stay exact
            log.exception("building the IVF index failed; searches stay exact")
            with self._lock:
                self._training = None
            return
        with self._lock:
            self._training = None
            if generation != self._generation:  # cleared meanwhile: built for nothing
                self._train_if_due()
                return
            later = np.arange(n, self._n, dtype=np.int64)
            if len(later):
                ivf.add_with_ids(np.ascontiguousarray(self._vec[n : self._n]), later)
            self._ivfs, self._ivf_template, self._trained_at = [ivf], template, len(rows)
            self._train_if_due()

    def _build(self, vec: np.ndarray, rows: np.ndarray) -> tuple[Any, Any]:
        """An IVF index over ``rows`` of ``vec``: ~4 sqrt(n) cells, trained on a sample of
        40 rows a cell (at most 4,096 cells); and an empty copy of it, trained."""
        import faiss

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
        ivf.train(np.ascontiguousarray(vec[np.sort(sample)]))
        template = faiss.clone_index(ivf)
        for start in range(0, len(rows), 262_144):
            chunk = rows[start : start + 262_144]
            ivf.add_with_ids(np.ascontiguousarray(vec[chunk]), chunk.astype(np.int64))
        ivf.nprobe = self.nprobe
        return ivf, template

    # ---- search ----------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> Hits:
        with self._lock:
            if self._live_count == 0 or k <= 0:
                return Hits()
            q = np.asarray(query, dtype=np.float32).reshape(self.dim)
            skip = exclude.encode("ascii") if exclude else None
            if not self._ivfs:
                return self._scan(q, k, skip)
            # FAISS's cost is the lists it scans, not how many rows it returns: asking
            # for SHORTLIST rows costs the same as for a few dozen.
            wanted = max(SHORTLIST, 16 * k)
            while True:
                found = np.concatenate(
                    [ivf.search(q[None], min(wanted, self._n))[1][0] for ivf in self._ivfs]
                )
                rows = found[found >= 0]
                rows = rows[self._live[rows]]
                d = distances(q, self._vec[rows], self._sq[rows])
                hits = self._nearest_subjects(rows, d, k, skip)
                if len(hits) >= k or wanted >= self._live_count or wanted >= 65_536:
                    return Hits(hits, (self._generation, rows))
                wanted *= 4

    def rescore(
        self, query: np.ndarray, previous: Hits, k: int, exclude: str | None = None
    ) -> list[SubjectHit]:
        with self._lock:
            shortlist = previous.shortlist
            if shortlist is None or shortlist[0] != self._generation or k <= 0:
                return self.search(query, k, exclude)
            rows = shortlist[1]
            rows = rows[self._live[rows]]
            q = np.asarray(query, dtype=np.float32).reshape(self.dim)
            d = distances(q, self._vec[rows], self._sq[rows])
            return self._nearest_subjects(rows, d, k, exclude.encode("ascii") if exclude else None)

    def _scan(self, q: np.ndarray, k: int, skip: bytes | None) -> Hits:
        """Exact: distances to every row (no copy of the rows), then the nearest few
        rows first, widening only while they hold fewer than k subjects."""
        n = self._n
        d = distances(q, self._vec[:n], self._sq[:n])
        d[~self._live[:n]] = np.inf
        m = min(n, max(SHORTLIST, 8 * k + 1))
        while True:
            rows = np.argpartition(d, m - 1)[:m] if m < n else np.arange(n)
            rows = rows[np.isfinite(d[rows])]
            hits = self._nearest_subjects(rows, d[rows], k, skip)
            if len(hits) >= k or m >= n:
                return Hits(hits, (self._generation, rows))
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
                self._subjects.name(int(subjects[i])),
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
            picked: np.ndarray = self._vec[rows[order]].copy()
            return picked

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
            number = self._subjects.find(subject_id)
            if number is None:
                return np.zeros(0, dtype=np.int64)
            n = self._n
            return np.flatnonzero((self._subj[:n] == number) & self._live[:n])

    # ---- files -----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write the live rows to ``folder`` (which must not exist yet) for :meth:`open`:
        numpy files with a quarter of spare rows (sparse, so free on disk until used),
        subject names sorted, and the IVF index if there is one.

        The lock is held only to take the rows' state, not while the files are written
        (seconds at 1M faces, a minute at 10M): searches and writes go on meanwhile, as
        a snapshot saved in the background needs (issue 41). Rows below ``n`` never
        change once written, the live flags are copied, and the IVF lists being saved
        take no more adds: later faces go to an IVF index of their own."""
        with self._lock:
            n = self._n
            live = self._live[:n].copy()
            columns = {"vec": self._vec, "sq": self._sq, "fid": self._fid, "subj": self._subj}
            names = self._subjects.all()
            ivf, template = self._freeze_ivf(), self._ivf_template
            trained_at = self._trained_at
        folder.mkdir(parents=True)
        rows = np.flatnonzero(live)
        capacity = len(rows) + len(rows) // 4 + 1024
        encoded = np.asarray([s.encode() for s in names], dtype=bytes)
        order = np.argsort(encoded, kind="stable")
        renumber = np.empty(len(names), dtype=np.int32)
        renumber[order] = np.arange(len(names), dtype=np.int32)
        np.save(folder / "subjects.npy", encoded[order] if len(names) else encoded)
        for name, values in [*columns.items(), ("live", live)]:
            _save_column(folder / f"{name}.npy", name, values, rows, capacity, renumber)
        trained = _save_ivf(folder, ivf, template, columns["vec"], rows, n)
        (folder / "index.json").write_text(
            json.dumps(
                {
                    "dim": self.dim,
                    "rows": int(len(rows)),
                    "trained_at": int(trained_at if trained else 0),
                    "ivf": trained,
                }
            )
        )

    def _freeze_ivf(self) -> Any:
        """The IVF index to save (None: none trained), taking no adds from now on
        (called holding the lock). One index over the rows below ``n``: that one, and
        later faces go to an empty copy of it, searched beside it. Several (as after
        opening a snapshot): the trained cells' empty copy, which the save fills."""
        import faiss

        if not self._ivfs:
            return None
        empty = faiss.clone_index(self._ivf_template)
        if len(self._ivfs) == 1:
            frozen = self._ivfs[0]
            self._ivfs = [frozen, empty]
            return frozen
        return empty

    @classmethod
    def open(
        cls, folder: Path, *, exact_below: int = EXACT_BELOW, nprobe: int = NPROBE
    ) -> AnnIndex:
        """An index over the files :meth:`save` wrote, memory-mapped copy-on-write: the
        pages are shared with every other process that opened the same folder until
        this one writes to them."""
        import faiss

        meta = json.loads((folder / "index.json").read_text())
        index = cls(int(meta["dim"]), exact_below=exact_below, nprobe=nprobe)
        n = int(meta["rows"])
        index._vec = np.load(folder / "vec.npy", mmap_mode="c")
        index._sq = np.load(folder / "sq.npy", mmap_mode="c")
        index._fid = np.load(folder / "fid.npy", mmap_mode="c")
        index._subj = np.load(folder / "subj.npy", mmap_mode="c")
        index._live = np.load(folder / "live.npy", mmap_mode="c")
        index._n = index._live_count = n
        index._subjects = _Subjects(np.load(folder / "subjects.npy", mmap_mode="r"))
        index._count_subjects(np.asarray(index._subj[:n][index._live[:n]]), +1)
        if meta["ivf"] and n >= exact_below:  # else searched exactly, as a fresh index is
            # read_index gives the IVF class itself (faiss downcasts), typed as Index.
            shared: Any = faiss.read_index(
                str(folder / "ivf.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
            )
            private: Any = faiss.read_index(str(folder / "ivf-empty.faiss"))
            shared.nprobe = private.nprobe = nprobe
            index._ivfs, index._trained_at = [shared, private], int(meta["trained_at"])
            index._ivf_template = faiss.clone_index(private)  # empty yet: no lists copied
        else:
            index._train_if_due()  # saved before its IVF was built: build it here
        return index


class _Subjects:
    """Subject id <-> number. Numbers below ``len(base)`` are the positions of a sorted
    array of UTF-8 ids (memory-mapped after :meth:`AnnIndex.open`); ids added later get
    the following numbers from a private list and dictionary."""

    def __init__(self, base: np.ndarray | None = None) -> None:
        self._base = base if base is not None else np.zeros(0, dtype="S1")
        self._extra: list[str] = []
        self._extra_no: dict[str, int] = {}

    def find(self, subject_id: str) -> int | None:
        if len(self._base):
            key = subject_id.encode()
            at = int(np.searchsorted(self._base, key))
            if at < len(self._base) and self._base[at] == key:
                return at
        return self._extra_no.get(subject_id)

    def number(self, subject_id: str) -> int:
        found = self.find(subject_id)
        if found is None:
            found = self._extra_no[subject_id] = len(self._base) + len(self._extra)
            self._extra.append(subject_id)
        return found

    def name(self, number: int) -> str:
        if number < len(self._base):
            return bytes(self._base[number]).decode()
        return self._extra[number - len(self._base)]

    def all(self) -> list[str]:
        return [bytes(b).decode() for b in self._base] + self._extra
