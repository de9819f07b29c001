"""Cached reads of what verify and identify need from the store: a subject's faces (by
gallery version) and each stored face's template recipe (it never changes)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from app.errors import SubjectHasNoFaces
from app.face.views import recipe_of
from app.gallery import Gallery, SubjectTimes
from app.gallery.cache import VersionedCache

# Subjects whose faces verify keeps in memory while the gallery does not change (~1 KB
# a subject with two faces).
SUBJECT_CACHE_SIZE = 4096
# Face id -> template recipe, remembered (a stored face's recipe never changes).
RECIPE_CACHE_SIZE = 100_000


class RecipeMemo:
    """Each stored face's template recipe, read once (bounded LRU, thread-safe)."""

    def __init__(self, gallery: Gallery, size: int = RECIPE_CACHE_SIZE) -> None:
        self.gallery = gallery
        self.size = size
        self._recipes: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, collection: str, face_ids: list[str]) -> dict[str, str]:
        with self._lock:
            known = {f: self._recipes[f] for f in face_ids if f in self._recipes}
        missing = [f for f in face_ids if f not in known]
        if missing:
            versions = self.gallery.faces.pipeline_versions(collection=collection, face_ids=missing)
            read = {f: recipe_of(v) for f, v in versions.items()}
            with self._lock:
                self._recipes.update(read)
                while len(self._recipes) > self.size:
                    self._recipes.popitem(last=False)
            known.update(read)
        return known


class SubjectReads:
    """A subject's faces of the running model, read by key from the store (the truth),
    so verify never waits for or depends on the size of the 1:N index."""

    def __init__(self, gallery: Gallery, *, dim: int, encoders: frozenset[str]) -> None:
        self.gallery = gallery
        self.dim = dim
        self.encoders = encoders
        self._cache = VersionedCache(SUBJECT_CACHE_SIZE)

    def seen(self, collection: str, subject_id: str) -> bool:
        """Whether the subject was read before (at any version)."""
        return self._cache.holds((collection, subject_id))

    def enrolled(self, collection: str, subject_id: str) -> tuple[list[str], np.ndarray, list[str]]:
        """The subject's face ids, embeddings and template recipes. A subject read at
        the gallery version that is still current is answered from memory (any write
        anywhere bumps the version, so a cached answer is never stale). SubjectNotFound
        or SubjectHasNoFaces."""
        face_ids, known, recipes, _, _ = self.read(collection, subject_id)
        self.require_faces(subject_id, face_ids)
        return face_ids, known, recipes

    @staticmethod
    def require_faces(subject_id: str, face_ids: list[str]) -> None:
        if not face_ids:
            raise SubjectHasNoFaces(
                f"Subject {subject_id!r} has no enrolled faces to compare with.",
                subject_id=subject_id,
            )

    def read(
        self, collection: str, subject_id: str
    ) -> tuple[list[str], np.ndarray, list[str], SubjectTimes, int]:
        """:meth:`enrolled`'s read, with the subject's retention times (as of the read:
        a last use written since, without a version bump, may be missing) and the
        gallery version it is valid at. Faces may be none."""
        version = self.gallery.changes.version()
        key = (collection, subject_id)
        cached = self._cache.get(key, version)
        if cached is None:
            face_ids, known, versions, times = self.gallery.subjects.embeddings(
                collection=collection,
                subject_id=subject_id,
                dim=self.dim,
                encoders=self.encoders,
            )
            cached = (face_ids, known, [recipe_of(v) for v in versions], times)
            self._cache.put(key, version, cached)
        face_ids, known, recipes, times = cached
        return face_ids, known, recipes, times, version

    def known(self, collection: str, subject_id: str) -> tuple[np.ndarray, list[str]]:
        """The subject's embeddings and their recipes; none when every face was deleted
        (the first new photo then starts afresh). SubjectNotFound if there is no such
        subject."""
        try:
            _, known, recipes = self.enrolled(collection, subject_id)
            return known, recipes
        except SubjectHasNoFaces:
            return np.zeros((0, self.dim), dtype=np.float32), []
