"""``faceverify evaluate`` and ``calibrate`` measure the embeddings the service serves
(issue 26): the same detection (the probe's quick pass, the enrollment's full search),
the same face, the same mirror rule. The calibration is fitted on them, so a distance
here that differed from /compare's would put the percent on the wrong curve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.evaluation import embed_images, mirror_rule, score_pairs
from app.face.recipes import Recipes
from app.scoring.pairs import Pair
from app.service import FaceService, build_service
from app.settings import Settings
from tests.helpers import DATA, parts

# A genuine pair, a far impostor, and genuine pairs with a small or rotated photo.
PAIRS = [
    ("obama.jpg", "obama2.jpg"),
    ("obama.jpg", "biden.jpg"),
    ("obama3.jpg", "obama_small.jpg"),
    ("curie_upright.jpg", "curie_orientation_6.jpg"),
]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def always_mirrored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaceService]:
    """A service whose mirror rule always adds the mirror pass (margin 1.9 around the
    threshold covers every distance a pair here has)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("mirror"), mirror_margin=1.9)
    service, _ = build_service(settings)
    yield service
    service.close()


def _pairs() -> list[Pair]:
    return [Pair(a == b, DATA / a, DATA / b, 0, a, b) for a, b in PAIRS]


def _evaluated(service: FaceService, mode: str) -> list[float]:
    recipes = Recipes(
        parts(service).pipeline,
        parts(service).settings.threshold,
        parts(service).settings.mirror_margin,
    )
    pairs = _pairs()
    paths: list[Path] = [p.a for p in pairs] + [p.b for p in pairs]
    embedded = embed_images(recipes, paths, templates=True, progress=False)
    scored = score_pairs(pairs, embedded, mode, mirror_rule(recipes))  # type: ignore[arg-type]
    return [float(d) for d in scored.distance]


@pytest.mark.parametrize("which", ["real_service", "always_mirrored"])
def test_compare_distance_is_evaluates(which: str, request: pytest.FixtureRequest) -> None:
    service: FaceService = request.getfixturevalue(which)
    evaluated = _evaluated(service, "fast")
    for (a, b), expected in zip(PAIRS, evaluated, strict=True):
        served = service.compare(image_a=(DATA / a).read_bytes(), image_b=(DATA / b).read_bytes())
        assert abs(served.result.distance - expected) < TOLERANCE, (a, b)


@pytest.mark.parametrize("mode", ["mixed", "thorough"])
def test_verify_distance_is_evaluates(mode: str, real_service: FaceService) -> None:
    """verify against a subject enrolled from the pair's first photo: mixed is a fast
    probe, thorough a thorough one."""
    evaluated = _evaluated(real_service, mode)
    for number, ((a, b), expected) in enumerate(zip(PAIRS, evaluated, strict=True)):
        subject = f"served-{mode}-{number}"
        real_service.enroll(
            collection="default",
            subject_id=subject,
            images=[(DATA / a).read_bytes()],
            face_policy="largest",
        )
        served = real_service.verify(
            collection="default",
            subject_id=subject,
            image=(DATA / b).read_bytes(),
            mode="thorough" if mode == "thorough" else "fast",
        )
        assert abs(served.result.distance - expected) < TOLERANCE, (a, b)
