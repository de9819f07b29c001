from __future__ import annotations

import numpy as np

from app.scoring.distance import distances, squared_norms


def test_matrix_distances_match_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    # dlib embeddings have norms around 1; include exact duplicates (distance 0).
    gallery = rng.normal(size=(500, 128)).astype(np.float32) / np.sqrt(128)
    query = gallery[17].copy()
    got = distances(query, gallery, squared_norms(gallery))
    want = np.array(
        [
            np.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(query, row, strict=True)))
            for row in gallery
        ]
    )
    # float32 expansion vs float64 loop: 1e-5 is ~100x float32 epsilon at these norms;
    # at 0 the clamp keeps the square root real (sqrt of rounding noise is < 1e-3).
    assert np.abs(got - want).max() < 1e-3
    assert np.abs(got - want)[np.arange(500) != 17].max() < 1e-5
    assert got[17] < 1e-3


def test_near_identical_vectors_never_give_nan() -> None:
    v = np.full(128, 0.1, dtype=np.float32)
    gallery = np.stack([v, v * (1 + 1e-7)])
    d = distances(v, gallery)
    assert np.isfinite(d).all() and (d >= 0).all()


def test_empty_gallery() -> None:
    assert distances(np.zeros(128), np.zeros((0, 128))).shape == (0,)
