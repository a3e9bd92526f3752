"""Channel selection criteria, one per ``--method``.

* ``reap``: greedy elimination (§2) on the pre-activation least-squares error.
* ``poem``: the same engine on the activation-weighted statistics
  ``Gw = Σ d̄_t x̄x̄ᵀ``, ``Pw = Σ d̄_t y x̄ᵀ`` with ``d̄_t = mean_i f'(y_it)²``
  (ReLU: the fraction of outputs that pass sample t), so errors the
  activation would hide cost nothing.
* ``l1`` / ``l2``: norms of the producer's filters (largest kept).
* ``random``: seeded uniform choice.
"""

from __future__ import annotations

import numpy as np

from .greedy import QuadProblem, greedy_eliminate
from .reconstruct import LayerData

METHODS = ("poem", "reap", "l1", "l2", "random")

#: reconstruction used by each method (see :func:`onnx_poem.solvers.reconstruct.reconstruct`)
RECONSTRUCTION = {"poem": "poem", "reap": "ls", "l1": "none", "l2": "none", "random": "none"}


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
    if method in ("l1", "l2"):
        f = filters.reshape(channels, -1).astype(np.float64)
        score = np.abs(f).sum(axis=1) if method == "l1" else np.sqrt((f * f).sum(axis=1))
    elif method == "random":
        score = np.random.default_rng(seed).random(channels)
    else:
        raise ValueError(f"unknown method {method!r}")
    kept = [np.flatnonzero(regions == r)[np.argsort(-score[regions == r], kind="stable")[:k]]
            for r, k in enumerate(region_keep)]  # fmt: skip
    return np.sort(np.concatenate(kept))
