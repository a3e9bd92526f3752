"""The rotation of a residual stream that puts its energy in the first dimensions (SliceGPT-style PCA).

For stream activations ``x_t ∈ R^D`` read at ``L`` places (every LayerNorm's input), centred over the
features (``x C``, as the sliced model computes them), the second moments ``M_l = Σ_t (x_t C)ᵀ (x_t C)``
``(D, D)`` are normalised by their traces (each LayerNorm divides by the norm, so a place's error counts
relative to its energy) and summed: ``M = Σ_l M_l / tr(M_l)``.  ``Q`` are ``M``'s eigenvectors by decreasing
eigenvalue: keeping ``Q``'s first ``k`` columns drops the ``D − k`` directions of least normalised energy,
``Σ_l (energy dropped at l) / (energy at l) = Σ_{i>k} λ_i``.

[R] SliceGPT rotates each block by its own input's ``Q_l`` and puts ``Q_lᵀ Q_{l+1}`` on the residual path;
one ``Q`` for the whole stream adds no matrices (no MACs) and is what is implemented.
"""

from __future__ import annotations

import numpy as np


def principal_basis(moments: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``Q`` ``(D, D)`` orthogonal and the energies ``λ`` ``(D,)`` (decreasing, summing to the number of places
    with energy) of the trace-normalised sum of ``moments`` (each ``(D, D)`` symmetric PSD, float64)."""
    total = np.zeros_like(moments[0], dtype=np.float64)
    for m in moments:
        tr = float(np.trace(m))
        if tr > 0:
            total += m / tr
    values, vectors = np.linalg.eigh((total + total.T) / 2)
    order = np.argsort(values)[::-1]
    q = vectors[:, order]
    q *= np.where(q[np.argmax(np.abs(q), axis=0), np.arange(q.shape[1])] < 0, -1.0, 1.0)  # a fixed sign per column
    return q, np.maximum(values[order], 0.0)


def centred_moment(x: np.ndarray, *, centre: bool = True) -> np.ndarray:
    """``(x C)ᵀ (x C)`` ``(D, D)`` float64 of rows ``x`` ``(rows, D)``, each row's mean over the features removed
    (``centre=False``: ``xᵀ x``, for a stream read by RMSNorms, which the sliced model leaves uncentred)."""
    xc = x.astype(np.float64)
    if centre:
        xc -= xc.mean(axis=1, keepdims=True)
    return xc.T @ xc
