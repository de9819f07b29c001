"""Euclidean distances between embeddings, vectorised over the whole gallery."""

from __future__ import annotations

import numpy as np


def squared_norms(matrix: np.ndarray) -> np.ndarray:
    """Row-wise ||x||^2 as float32, for :func:`distances` to reuse across queries."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms: np.ndarray = np.einsum("ij,ij->i", matrix, matrix)
    return norms


def distances(
    query: np.ndarray, gallery: np.ndarray, gallery_sq_norms: np.ndarray | None = None
) -> np.ndarray:
    """Euclidean distance from one query to every gallery row, in one matrix product.

    Uses ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b and clamps at 0 before the square root:
    rounding can make the expansion slightly negative for near-identical vectors.
    In float32, for dlib embeddings (norms about 1), the result is within 1e-5 of the
    plain ``np.linalg.norm(gallery - query, axis=1)`` (tests/scoring/test_distance.py).

    Args:
        query: ``(D,)`` embedding.
        gallery: ``(N, D)`` embeddings.
        gallery_sq_norms: ``squared_norms(gallery)`` if already known.

    Returns:
        ``(N,)`` float32 distances.
    """
    gallery = np.asarray(gallery, dtype=np.float32)
    query = np.asarray(query, dtype=np.float32)
    if gallery.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    if gallery_sq_norms is None:
        gallery_sq_norms = squared_norms(gallery)
    d2 = gallery_sq_norms + np.float32(query @ query) - 2.0 * (gallery @ query)
    np.maximum(d2, 0.0, out=d2)
    root: np.ndarray = np.sqrt(d2, out=d2)
    return root
