"""The rotation of a residual stream that puts its energy in the first dimensions (SliceGPT-style PCA).

For stream activations ``x_t ∈ R^D`` read at ``L`` places (every LayerNorm's input), centred over the
features (``x C``, as the sliced model computes them) and normalised (``n_t = x_t C / rms(x_t C)``, what the
norm passes on before its scale), the second moments ``M_l = Σ_t n_tᵀ n_t`` ``(D, D)`` are normalised by their
traces and summed: ``M = Σ_l M_l / tr(M_l)``.  ``Q`` are ``M``'s eigenvectors by decreasing
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
    """``Nᵀ N`` ``(D, D)`` float64 of the normalised rows ``n = x C / rms(x C)`` of ``x`` ``(rows, D)``: what the
    LayerNorm computes before its scale (``centre=False``: ``x / rms(x)``, an RMSNorm's stream, left uncentred).

    [R] Normalised per row, as SliceGPT takes the normalisation's output: with ``x C`` itself, the few tokens of
    large norm (a class token) dominate the basis; on the CIFAR ViT the normalised rows' basis kept 98.74 /
    97.84 / 95.24 % top-1 agreement at 77 / 67 / 48 of 96 dimensions, the raw rows' 98.06 / 96.92 / 93.40 %."""
    xc = x.astype(np.float64)
    if centre:
        xc -= xc.mean(axis=1, keepdims=True)
    xc /= np.sqrt(np.mean(xc * xc, axis=1, keepdims=True) + 1e-12)
    return xc.T @ xc
