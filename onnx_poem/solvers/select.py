"""Channel selection criteria, one per ``--method``.

* ``reap``: greedy elimination (§2) on the pre-activation least-squares error.
* ``poem``: the same engine on the activation-weighted statistics
  ``Gw = Σ d̄_t x̄x̄ᵀ``, ``Pw = Σ d̄_t y x̄ᵀ`` with ``d̄_t = mean_i f'(y_it)²``
  (ReLU: the fraction of outputs that pass sample t), so errors the
  activation would hide cost nothing (ALGORITHMS.md §4, shared approximation;
  measured against REAP's unweighted selection under POEM's reconstruction:
  differences within ±0.3 point either way, see benchmarks/RESULTS.md).
* ``nu``: Neuro-Unification, greedy merges of a unit into the one it behaves most like
  (:mod:`onnx_poem.solvers.merge`).
* ``thinet``: greedy *growth* of the removed set T by the error of dropping
  channels without refit, ``E(T) = Σ_i ‖Σ_{c∈T} W_ic x_c‖² = 1ᵀ K_TT 1`` with the
  channel contribution Gram ``K_cd = tr(W_c G_cd W_dᵀ)`` [ThiNet].
* ``apoz``: highest Average Percentage of Zeros of a channel in the consumers'
  inputs (post-activation) removed first [Hu et al. 2016].
* ``l1`` / ``l2``: norms of the producer's filters (largest kept).
* ``random``: seeded uniform choice.
"""

from __future__ import annotations

import numpy as np

from .greedy import QuadProblem, greedy_eliminate
from .merge import nu_select
from .reconstruct import LayerData

METHODS = ("poem", "reap", "thinet", "nu", "apoz", "l1", "l2", "random")

#: reconstruction used by each method (see :func:`onnx_poem.solvers.reconstruct.reconstruct`)
RECONSTRUCTION = {
    "poem": "poem",
    "reap": "ls",
    "thinet": "scale",
    "nu": "nu",
    "apoz": "none",
    "l1": "none",
    "l2": "none",
    "random": "none",
}


def contribution_gram(d: LayerData, atoms: int) -> np.ndarray:
    """``K: (atoms, atoms)``, ``K_ab = tr(W_a G_ab W_bᵀ)`` with the original weights (absent atoms: 0)."""
    n = d.G.shape[0] - 1
    C = n // d.k
    M = d.W0[:, :n]
    full = (M.T @ M) * d.G[:n, :n]  # (n, n)
    K = full.reshape(C, d.k, C, d.k).sum(axis=(1, 3))
    if d.index is None:
        return K
    idx = np.asarray(d.index)
    out = np.zeros((atoms, atoms))
    present = np.flatnonzero(idx >= 0)
    out[np.ix_(present, present)] = K[np.ix_(idx[present], idx[present])]
    return out


def _thinet(layers: list[LayerData], channels: int, regions: np.ndarray, region_keep: np.ndarray) -> np.ndarray:
    K = np.zeros((channels, channels))
    for d in layers:
        K += contribution_gram(d, channels)
    removed = np.zeros(channels, dtype=bool)
    cross = np.zeros(channels)  # Σ_{d∈T} K[c, d]
    left = np.bincount(regions, minlength=len(region_keep)) - region_keep
    for _ in range(int(left.sum())):
        delta = 2 * cross + np.diag(K)
        delta[removed | (left[regions] <= 0)] = np.inf
        c = int(np.argmin(delta))
        removed[c] = True
        left[regions[c]] -= 1
        cross += K[:, c]
    return np.flatnonzero(~removed)


def _apoz(layers: list[LayerData], channels: int) -> np.ndarray:
    """Fraction of zero inputs per atom, averaged over the consumers that read it."""
    zeros, count = np.zeros(channels), np.zeros(channels)
    for d in layers:
        if len(d.fit) == 0:
            continue
        C = d.fit.X.shape[1] // d.k
        frac = (d.fit.X.reshape(len(d.fit), C, d.k) == 0).mean(axis=(0, 2))
        idx = np.arange(C) if d.index is None else np.asarray(d.index)
        present = idx >= 0
        zeros[present] += frac[idx[present]]
        count[present] += 1
    return zeros / np.maximum(count, 1)


def select_channels(
    method: str,
    layers: list[LayerData],
    channels: int,
    keep: int,
    *,
    filters: np.ndarray,
    seed: int,
    lam: float = 0.01,
    regions: np.ndarray | None = None,
    region_keep: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted indices of the ``keep`` channels to keep out of ``channels``.

    Args:
        method: one of :data:`METHODS`.
        channels: number of atoms (channels of a plain group).
        layers: the consumers' statistics (selection sums their costs).
        filters: ``(channels, ...)`` producer weights per atom, all producers side by side (for ``l1``/``l2``).
        seed: seed of ``random``.
        regions, region_keep: atom → region, and atoms to keep per region (``keep`` is their
            sum); ``None``: one region of ``keep``.
    """
    if keep >= channels:
        return np.arange(channels)
    if regions is None or region_keep is None:
        regions, region_keep = np.zeros(channels, dtype=np.int64), np.array([keep])
    if method in ("reap", "poem"):
        w = method == "poem"
        problems = [QuadProblem(d.Gw if w else d.G, d.Pw if w else d.P, d.W0, d.k, d.index) for d in layers]
        return greedy_eliminate(problems, channels, keep, lam=lam, regions=regions, region_keep=region_keep)
    if method == "thinet":
        return _thinet(layers, channels, regions, region_keep)
    if method == "nu":
        return nu_select(layers, channels, regions, region_keep)
    if method == "apoz":
        score = -_apoz(layers, channels)
    elif method in ("l1", "l2"):
        f = filters.reshape(channels, -1).astype(np.float64)
        score = np.abs(f).sum(axis=1) if method == "l1" else np.sqrt((f * f).sum(axis=1))
    elif method == "random":
        score = np.random.default_rng(seed).random(channels)
    else:
        raise ValueError(f"unknown method {method!r}")
    kept = [
        np.flatnonzero(regions == r)[np.argsort(-score[regions == r], kind="stable")[:k]]
        for r, k in enumerate(region_keep)
    ]
    return np.sort(np.concatenate(kept))
