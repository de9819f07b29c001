"""How a photo becomes the embedding the service compares, written once.

Two recipes, used by the service (verify, identify, compare, enroll), by ``faceverify
bench`` and by ``faceverify evaluate`` / ``calibrate``, so the calibration is fitted on
exactly the embeddings the service computes (issue 26):

- **probe** (verify, identify, compare): the quick low-resolution detection pass, the
  main face (:func:`~app.face.detect.main_face`), and either the chip alone with the
  mirror pass added only near the threshold (fast, the *mirror rule*) or the template
  recipe's views (thorough).
- **enrollment**: the full detection search, the largest face, and the template recipe
  (FACEVERIFY_TEMPLATE_VIEWS views; 2 = the chip and its mirror).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.face.detect import DetectedFace, largest, main_face
from app.face.pipeline import Choose, FacePipeline
from app.face.timing import Timings
from app.face.views import FAST


@dataclass(frozen=True)
class Recipes:
    """The probe and enrollment recipes of one pipeline and threshold.

    ``mirror_margin``: a fast probe is embedded from its chip alone, and the mirror pass
    is added when a distance lies within this of ``threshold`` (2 or more: always).
    """

    pipeline: FacePipeline
    threshold: float
    mirror_margin: float

    @property
    def templates(self) -> bool:
        """Whether faces are enrolled as templates of several views."""
        return self.pipeline.template != FAST

    @property
    def skips_mirror(self) -> bool:
        """Whether a fast probe starts from its chip alone (see :meth:`undecided`)."""
        return self.pipeline.flip_average and self.mirror_margin < 2

    def thorough(self, thorough: bool) -> bool:
        """Whether a probe asked to be thorough gets the template views (templates on)."""
        return thorough and self.templates

    def probe_recipe(self, thorough: bool) -> str:
        """The recipe name a probe embedded this way is made with."""
        return self.pipeline.template if self.thorough(thorough) else FAST

    # ---- probe -----------------------------------------------------------------------
    def find_probe(
        self, data: bytes, timings: Timings, *, thorough: bool, choose: Choose = main_face
    ) -> list[DetectedFace]:
        """Every face of a probe photo (the quick pass first); a thorough probe's main
        face (or the faces ``choose`` picks) also gets the template views cut."""
        views = choose if self.thorough(thorough) else None
        return self.pipeline.find_faces(data, timings, quick=True, views=views)

    def embed_probes(
        self, faces: list[DetectedFace], timings: Timings, *, thorough: bool
    ) -> np.ndarray:
        """The probes' first embeddings, one batch: fast ones from the chip alone when
        the mirror rule may skip the mirror pass (:meth:`undecided` then says when it
        may not, and :meth:`add_mirror` adds it)."""
        if self.thorough(thorough):
            return self.pipeline.embed(faces, timings, thorough=True)
        mirror = False if self.skips_mirror else None
        return self.pipeline.embed(faces, timings, mirror=mirror)

    def undecided(self, d: np.ndarray, *, thorough: bool) -> bool:
        """The mirror rule: whether a fast probe's single-pass distances ``d`` lie so near
        the threshold that the mirror pass must settle them (on lfw-devtrain it moved a
        distance by 0.008 median, 0.078 at most; far from the threshold the decision
        cannot change and the percent moves a fraction of a point:
        benchmarks/flip_skip.py, docs/PERFORMANCE.md)."""
        if self.thorough(thorough):
            return False  # a thorough probe has every view already
        if not self.skips_mirror or not len(d):
            return False
        # Against templates the threshold moves by hundredths, well inside the margin.
        return bool(np.any(np.abs(d - self.threshold) <= self.mirror_margin))

    def add_mirror(
        self, faces: list[DetectedFace], single: np.ndarray, timings: Timings
    ) -> np.ndarray:
        """The probes' embeddings with the mirror pass, from their single-pass ones."""
        return self.pipeline.add_mirror(faces, single, timings)

    # ---- enrollment ------------------------------------------------------------------
    def find_enrollment(
        self, data: bytes, timings: Timings, choose: Choose = largest
    ) -> list[DetectedFace]:
        """Every face of an enrollment photo (the full search); the one ``choose`` picks
        (the largest: the one /enroll stores) also gets the template views cut."""
        views = choose if self.templates else None
        return self.pipeline.find_faces(data, timings, views=views)

    def embed_enrollment(self, faces: list[DetectedFace], timings: Timings) -> np.ndarray:
        """The faces' stored embeddings (templates when on), one batch."""
        return self.pipeline.embed(faces, timings, thorough=self.templates)
