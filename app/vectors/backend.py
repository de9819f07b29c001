"""The vector backend: where identify searches, how the gallery is counted, and how
stored faces reach the search. One protocol, two backends:

- :class:`~app.vectors.memory.MemorySearch`: this process's own index of each collection
  (exact or ANN), filled from the gallery on start-up and kept current by replaying
  its change log (app/vectors/sync.py); its write side applies a write to the index
  once the write has committed.
- :class:`~app.vectors.pgvector.PgvectorSearch`: PostgreSQL searches itself with
  pgvector; its write side joins the gallery's transaction and writes the vector rows
  there (so a write is searchable on every replica when it commits).

``app.service.build`` picks one; nothing else asks which it has.
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from app.gallery import Mirror
from app.vectors.index import Hits, SubjectHit


class VectorBackend(Protocol):
    # "memory" or "pgvector" (shown in /info).
    name: str

    @property
    def mirror(self) -> Mirror:
        """The write side: joins every versioned write of the gallery
        (app/gallery/unit.py)."""
        ...

    @property
    def tables(self) -> tuple[str, ...]:
        """Tables besides the gallery's that hold embeddings (vacuumed after deletes)."""
        ...

    # ---- reading ---------------------------------------------------------------------
    @property
    def ready(self) -> threading.Event:
        """Set once searches can be answered (the start-up load is done)."""
        ...

    def search(
        self, collection: str, embedding: np.ndarray, k: int, exclude: str | None = None
    ) -> tuple[Hits, int]:
        """The nearest subjects (each by its nearest face, ``exclude`` left out) and how
        many faces were searched. IndexLoading while the collection cannot be searched
        yet."""
        ...

    def rescore(
        self, collection: str, embedding: np.ndarray, previous: Hits, k: int
    ) -> list[SubjectHit]:
        """:meth:`search` for an embedding near the one that gave ``previous``: its
        shortlist re-scored exactly."""
        ...

    def counts(self, collection: str | None = None) -> dict[str, int]:
        """Faces and subjects of the running model: of one collection, or of all."""
        ...

    def subject_count(self, collection: str) -> int:
        """The subjects a search of ``collection`` just looked at (N of the open-set
        rule); cheap enough for every identify."""
        ...

    def face_counts(self) -> dict[str, int]:
        """Faces of the running model per collection (those with any)."""
        ...

    # ---- lifecycle -------------------------------------------------------------------
    def rebuild(self) -> None:
        """The search structure built afresh from the gallery."""
        ...

    def erase(self, face_ids: list[str], collection: str | None = None) -> None:
        """Deleted faces (or a deleted collection's) out of any file this backend keeps
        beside the database (index snapshots)."""
        ...
