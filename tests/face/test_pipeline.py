"""The real Pipeline around the fake detector and encoder: decoding, the reduced decode
of big images and the rescaling of what was found, alignment, flip averaging."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from app.face.registry import ENCODER_MODELS, pipeline_version
from app.face.timing import Timings
from app.face.views import RECIPE
from app.names import ENCODER_MODEL_NAMES, MAX_TEMPLATE_VIEWS
from app.settings import Settings
from tests.fakes import face, fake_image, fake_pipeline, unit_vector


def test_flip_averaging_encodes_each_chip_and_its_mirror_in_one_batch() -> None:
    pipeline = fake_pipeline(flip_average=True)
    seen: list[int] = []
    encode = pipeline.encoder.encode

    def spy(chips: np.ndarray) -> np.ndarray:
        seen.append(len(chips))
        return encode(chips)

    pipeline.encoder.encode = spy  # type: ignore[method-assign]
    faces = pipeline.find_faces(fake_image(face(3), face(4, box=(120, 10, 200, 90))), Timings())
    embeddings = pipeline.embed(faces, Timings())
    assert seen == [4]  # two faces and their two mirrors, one batch
    assert np.allclose(embeddings[0], unit_vector(3)) and np.allclose(embeddings[1], unit_vector(4))
    assert fake_pipeline(flip_average=False).embed(faces, Timings()).shape == (2, 128)


def test_a_big_photo_is_decoded_smaller_and_its_faces_reported_in_its_own_pixels() -> None:
    pipeline = fake_pipeline()
    aligned_in: list[tuple[int, ...]] = []
    align = pipeline.encoder.align

    def spy(rgb, found):  # type: ignore[no-untyped-def]
        aligned_in.append(rgb.shape)
        return align(rgb, found)

    pipeline.encoder.align = spy  # type: ignore[method-assign]
    # 2400 px wide: decoded at half size (the fake detector looks at up to 800 px, so
    # 1000 px is enough), then the box is mapped back to the photo's pixels.
    big = fake_image(face(5, box=(400, 200, 800, 600)), size=(2400, 1000))
    (found,) = pipeline.find_faces(big, Timings())
    assert aligned_in == [(500, 1200, 3)]  # the chip is cut from the decoded image
    assert (found.box.left, found.box.top, found.box.right, found.box.bottom) == (
        400,
        200,
        800,
        600,
    )
    assert found.frame == (2400, 1000) and found.landmarks[0] == (720.0, 360.0)
    assert np.allclose(pipeline.embed([found], Timings())[0], unit_vector(5))


def test_the_registry_names_the_models_and_keeps_the_stored_version_string() -> None:
    assert set(ENCODER_MODELS) == {"dlib_resnet_v1"}
    # Settings validates against the leaf module of names: it must name the same models
    # and the template recipe's length (app/names.py).
    assert set(ENCODER_MODEL_NAMES) == set(ENCODER_MODELS)
    assert MAX_TEMPLATE_VIEWS == len(RECIPE)
    # Stored with every face since the first release: the refactoring must not move it.
    # Issue 39 made YuNet the default fallback, which names itself in the string.
    cnn = Settings(detect_fallback="cnn")
    assert pipeline_version(cnn) == "hog-u0-m800-r1024-cnn400/sp5/chip150p0.25/j0/flip"
    assert pipeline_version(Settings()) == "hog-u0-m800-r1024-yunet640/sp5/chip150p0.25/j0/flip"
    with pytest.raises(ValidationError, match="unknown model 'facenet'"):
        Settings(model="facenet")
