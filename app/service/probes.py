"""A probe photo's faces and embeddings: the steps verify, identify, compare and detect
share (:class:`ProbeSteps`, a collaborator of the use cases)."""

from __future__ import annotations

import numpy as np

from app.errors import NoFace
from app.face import quality
from app.face.cores import spare_cores
from app.face.detect import DetectedFace, main_face
from app.face.pipeline import FacePipeline, every
from app.face.quality import Assessment, FaceMeasures
from app.face.recipes import Recipes
from app.face.timing import Timings
from app.service.results import DetectResult, ProbeFace, ProbeMode
from app.settings import Settings
from app.slots import FairSlots


class ProbeSteps:
    """Finding, checking and embedding a probe's main face, with the inference slots
    held while the models run."""

    def __init__(
        self, settings: Settings, pipeline: FacePipeline, recipes: Recipes, slots: FairSlots
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.recipes = recipes
        self.slots = slots

    def found(self, faces: list[DetectedFace], image_index: int | None) -> list[DetectedFace]:
        """``faces``, or NoFace naming the image when there are none."""
        if not faces:
            where = "the image" if image_index is None else f"image {image_index}"
            side = self.settings.min_face_side
            raise NoFace(
                f"No face was found in {where}. Use a sharper, frontal photo"
                + (f" where the face is at least {side} px wide." if side else "."),
                image_index=image_index,
            )
        return faces

    def recipe(self, mode: ProbeMode) -> str:
        """The recipe a probe embedded in ``mode`` is made with."""
        return self.recipes.probe_recipe(mode == "thorough")

    def probe(self, data: bytes, timings: Timings, mode: ProbeMode) -> tuple[ProbeFace, np.ndarray]:
        (probe,), embeddings = self.probes([data], timings, mode)
        return probe, embeddings[0]

    def probes(
        self, images: list[bytes], timings: Timings, mode: ProbeMode
    ) -> tuple[list[ProbeFace], np.ndarray]:
        """Each photo's main face, all encoded in one batch by the probe recipe (fast:
        the chip alone while the mirror rule may skip the mirror pass; thorough: the
        template views)."""
        thorough = mode == "thorough"
        with self.slots.hold():
            found = []
            for number, data in enumerate(images):
                faces = self.recipes.find_probe(data, timings, thorough=thorough)
                faces = self.found(faces, number if len(images) > 1 else None)
                found.append((main_face(faces), len(faces)))
            mains = [face for face, _ in found]

            def grade() -> list[tuple[FaceMeasures, Assessment]]:
                with timings.measure("quality_ms"):
                    measured = [quality.measure(face) for face in mains]
                    return [(m, quality.assess(m)) for m in measured]

            def embed() -> np.ndarray:
                return self.recipes.embed_probes(mains, timings, thorough=thorough)

            # The quality score needs only the chip: on a spare core, it costs no time.
            assessed, embeddings = spare_cores().beside(grade, embed)
        min_inter_eye = self.settings.min_inter_eye
        probes = [
            ProbeFace(face, count, assessment, measures, quality.checks(measures, min_inter_eye))
            for (face, count), (measures, assessment) in zip(found, assessed, strict=True)
        ]
        return probes, embeddings

    def every_face(
        self, data: bytes, timings: Timings, mode: ProbeMode, limit: int = 100
    ) -> tuple[list[ProbeFace], np.ndarray]:
        """Every face of a photo as a probe (found as :meth:`probes` finds them, the
        ``limit`` largest first), all embedded in one batch by the probe recipe."""
        thorough = mode == "thorough"
        with self.slots.hold():
            found = self.recipes.find_probe(data, timings, thorough=thorough, choose=every)
            faces = sorted(self.found(found, None), key=lambda f: -f.box.area)[:limit]
            with timings.measure("quality_ms"):
                measured = [quality.measure(face) for face in faces]
            embeddings = self.recipes.embed_probes(faces, timings, thorough=thorough)
        min_inter_eye = self.settings.min_inter_eye
        probes = [
            ProbeFace(f, len(faces), quality.assess(m), m, quality.checks(m, min_inter_eye))
            for f, m in zip(faces, measured, strict=True)
        ]
        return probes, embeddings

    def near_threshold(self, d: np.ndarray, mode: ProbeMode) -> bool:
        """The mirror rule (:meth:`Recipes.undecided`): a fast probe's distances lie so
        near the threshold that the mirror pass must settle them."""
        return self.recipes.undecided(d, thorough=mode == "thorough")

    def mirrored(self, probes: list[ProbeFace], single: np.ndarray, timings: Timings) -> np.ndarray:
        with self.slots.hold():
            return self.recipes.add_mirror([p.face for p in probes], single, timings)

    def detect(self, image: bytes) -> DetectResult:
        """Every face in the photo (the full search, as enrollment looks), with its
        landmarks, pose, size, measures and quality; nothing is encoded or stored."""
        timings = Timings()
        with self.slots.hold():
            faces = self.pipeline.find_faces(image, timings)
            out = []
            with timings.measure("quality_ms"):
                for face in faces:
                    measures = quality.measure(face)
                    checks = quality.checks(measures, self.settings.min_inter_eye)
                    out.append((face, measures, quality.assess(measures), checks))
        return DetectResult(out, timings)
