"""Enrollment templates on real photos: the recipe's views (app/face/views.py), cut from
the photo around dlib's alignment and averaged by the real encoder."""

from __future__ import annotations

import numpy as np
import pytest

from app.face.detect import largest, main_face
from app.face.registry import build_pipeline
from app.face.timing import Timings
from app.face.views import RECIPE, STANDARD, View, curve_for, recipe_name, recipe_of, versioned
from app.service import FaceService
from app.settings import Settings
from tests.helpers import data, parts


@pytest.fixture(scope="module")
def pipeline():  # type: ignore[no-untyped-def]
    return build_pipeline(Settings(template_views=18))


def test_the_standard_view_is_the_aligned_chip_and_the_mirror_its_flip(pipeline) -> None:  # type: ignore[no-untyped-def]
    (found,) = pipeline.find_faces(data("obama.jpg"), Timings(), views=main_face)
    assert found.views.shape == (18, 150, 150, 3)
    assert RECIPE[0] == STANDARD and RECIPE[1] == View(mirror=True)
    assert np.array_equal(found.views[0], found.chip)
    assert np.array_equal(found.views[1], found.chip[:, ::-1])
    # Every other view is a different crop of the photo (not a copy of the chip).
    for i in range(2, 18, 2):
        assert not np.array_equal(found.views[i], found.chip), RECIPE[i]


def test_the_same_photo_always_gives_the_same_template(pipeline) -> None:  # type: ignore[no-untyped-def]
    templates = []
    for _ in range(2):
        faces = pipeline.find_faces(data("obama.jpg"), Timings(), views=main_face)
        templates.append(pipeline.embed(faces, Timings(), thorough=True)[0])
    assert np.array_equal(templates[0], templates[1])


def test_a_template_stays_near_the_fast_embedding_and_tells_people_apart(pipeline) -> None:  # type: ignore[no-untyped-def]
    def both(name: str) -> tuple[np.ndarray, np.ndarray]:
        faces = pipeline.find_faces(data(name), Timings(), views=main_face)
        return (
            pipeline.embed(faces, Timings())[0],
            pipeline.embed(faces, Timings(), thorough=True)[0],
        )

    obama_fast, obama_template = both("obama.jpg")
    obama2_fast, _ = both("obama2.jpg")
    _, biden_template = both("biden.jpg")
    # The views are small changes of the same crop: the mean moves a few hundredths.
    assert 0.0 < np.linalg.norm(obama_template - obama_fast) < 0.1
    assert np.linalg.norm(obama_template - obama2_fast) < 0.6  # same person
    assert np.linalg.norm(obama_template - biden_template) > 0.6  # two people


def test_thorough_embedding_needs_the_views_cut() -> None:
    pipeline = build_pipeline(Settings(template_views=4))
    faces = pipeline.find_faces(data("obama.jpg"), Timings())
    with pytest.raises(ValueError, match="the face's views"):
        pipeline.embed(faces, Timings(), thorough=True)


def test_only_the_chosen_face_of_a_group_photo_gets_views(pipeline) -> None:  # type: ignore[no-untyped-def]
    faces = pipeline.find_faces(data("two_people.jpg"), Timings(), views=largest)
    assert len(faces) == 2
    assert [f.views is not None for f in faces] == [f is largest(faces) for f in faces]


def test_recipe_names_and_curves() -> None:
    assert recipe_name(2) == "fast" and recipe_name(16) == "views16"
    assert versioned("p/flip", "fast") == "p/flip"
    assert recipe_of(versioned("p/flip", "views16")) == "views16"
    assert recipe_of("hog-u0-m800-r1024-cnn400/dlib_resnet_v1/j0/flip") == "fast"
    assert curve_for("fast", "fast") == "fast"
    assert curve_for("views16", "fast") == curve_for("fast", "views16") == "mixed"
    assert curve_for("views16", "views16") == "thorough"


def test_real_enrollment_stores_a_template_and_a_thorough_verify_uses_it(
    real_service: FaceService,
) -> None:
    result = real_service.enroll(
        subject_id="views-obama", images=[data("obama.jpg")], collection="default"
    )
    (stored,) = result.faces
    assert recipe_of(stored.pipeline_version) == parts(real_service).pipeline.template == "views10"
    fast = real_service.verify(
        collection="default", subject_id="views-obama", image=data("obama2.jpg")
    )
    thorough = real_service.verify(
        collection="default", subject_id="views-obama", image=data("obama2.jpg"), mode="thorough"
    )
    assert fast.result.match and thorough.result.match
    assert (fast.mode, fast.result.curve) == ("fast", "mixed")
    assert (thorough.mode, thorough.result.curve) == ("thorough", "thorough")
    assert fast.result.score == real_service.curve("mixed").percent(fast.result.distance)
    stranger = real_service.verify(
        collection="default", subject_id="views-obama", image=data("biden.jpg"), mode="thorough"
    )
    assert not stranger.result.match
