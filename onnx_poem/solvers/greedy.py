"""Greedy backward group elimination (ALGORITHMS.md §2).

Problem per consumer: choose kept channels S and ``W̃`` minimising
``‖Y − W̃ X̄_S‖²``, given only ``G = X̄X̄ᵀ: (n+1, n+1)`` and ``P = Y X̄ᵀ: (m, n+1)``.
Channel ``c`` owns the ``k`` columns ``c·k … c·k+k-1``; the last column
(bias) is never removed.  With ``H = (G + δI)⁻¹`` and the refit
``W = (P + δW0) H``, removing group M costs

    ΔE_M = tr( W_M (H_MM)⁻¹ W_Mᵀ )

and the downdates ``W ← W − W_M (H_MM)⁻¹ H_M:``, ``H ← H − H_:M (H_MM)⁻¹ H_M:``
keep ``W`` the optimal refit on the remaining columns.  Several consumers of
one group are eliminated together; a channel's cost is the sum over them.
``H`` is re-inverted from ``G`` every ``C/8`` removals to stop drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas

from .linalg import damping, spd_inverse


@dataclass(frozen=True)
class QuadProblem:
    """One consumer's quadratic problem.

    Attributes:
        G: ``(n+1, n+1)`` float64 Gram of the inputs (bias row last).
        P: ``(m, n+1)`` float64 cross term targets × inputs.
        W0: ``(m, n+1)`` original weights (damping target).
        k: columns per channel (``n = C·k``).
        index: ``(atoms,)`` channel of each atom in this consumer, ``-1`` where absent
            (``None``: atom ``a`` is channel ``a``).
    """

    G: np.ndarray
    P: np.ndarray
    W0: np.ndarray
    k: int
    index: np.ndarray | None = None


class _State:
    def __init__(self, p: QuadProblem, lam: float) -> None:
        self.p = p
        self.delta = damping(p.G, lam)
        self.Gd = p.G + self.delta * np.eye(p.G.shape[0])
        self.Pd = p.P + self.delta * p.W0
        self.H = np.ascontiguousarray(spd_inverse(self.Gd))  # C order: remove() updates Hᵀ, Wᵀ in place
        self.W = np.ascontiguousarray(self.Pd @ self.H)

    def channel(self, atoms: np.ndarray) -> np.ndarray:
        """Channel of each atom in this consumer (``-1``: absent)."""
        return atoms if self.p.index is None else self.p.index[atoms]

    def cols(self, channels: np.ndarray) -> np.ndarray:
        """``(A, k)`` column indices of ``channels``."""
        return channels[:, None] * self.p.k + np.arange(self.p.k)

    def costs(self, alive: np.ndarray) -> np.ndarray:
        ch = self.channel(alive)
        out = np.zeros(len(alive))
        present = ch >= 0
        idx = self.cols(ch[present])
        if self.p.k == 1:
            d = np.maximum(self.H[idx[:, 0], idx[:, 0]], 1e-300)
            out[present] = np.sum(self.W[:, idx[:, 0]] ** 2, axis=0) / d
            return out
        hmm = self.H[idx[:, :, None], idx[:, None, :]]  # (A, k, k)
        inv = np.linalg.inv(hmm + 1e-300 * np.eye(self.p.k))
        wm = self.W[:, idx]  # (m, A, k)
        out[present] = np.einsum("mak,akl,mal->a", wm, inv, wm)
        return out

    def remove(self, atom: int) -> None:
        channel = int(self.channel(np.array([atom]))[0])
        if channel < 0:
            return
        M = self.cols(np.array([channel]))[0]
        inv = np.linalg.inv(self.H[np.ix_(M, M)])
        hm = self.H[M, :]  # (k, n1)
        # W -= (W_M inv) hm and H -= (H_M inv) hm, in place: BLAS updates the Fortran views Wᵀ, Hᵀ
        blas.dgemm(-1.0, hm.T, (self.W[:, M] @ inv).T, beta=1.0, c=self.W.T, overwrite_c=True)
        blas.dgemm(-1.0, hm.T, (self.H[:, M] @ inv).T, beta=1.0, c=self.H.T, overwrite_c=True)
        self.H[M, :] = 0.0
        self.H[:, M] = 0.0
        self.W[:, M] = 0.0  # H stays symmetric up to rounding; reinvert() resets the drift

    def reinvert(self, alive: np.ndarray) -> None:
        ch = self.channel(alive)
        keep = np.concatenate([self.cols(np.sort(ch[ch >= 0])).reshape(-1), [self.p.G.shape[0] - 1]])
        self.H = np.zeros_like(self.H)
        self.H[np.ix_(keep, keep)] = spd_inverse(self.Gd[np.ix_(keep, keep)])
        self.W = np.zeros_like(self.W)
        self.W[:, keep] = self.Pd[:, keep] @ self.H[np.ix_(keep, keep)]


def greedy_eliminate(
    problems: list[QuadProblem],
    channels: int,
    keep: int,
    *,
    lam: float = 0.01,
    regions: np.ndarray | None = None,
    region_keep: np.ndarray | None = None,
    trace: list[float] | None = None,
    scales: list[float] | None = None,
    removed: list[int] | None = None,
) -> np.ndarray:
    """Indices of the ``keep`` atoms (sorted) left after greedy elimination of the others.

    With ``trace``, the cost of every removal is appended to it, in removal order:
    ``Σ_s scales[s]·ΔE_s`` over the problems (``scales`` default to 1), so that
    ``cumsum(trace)`` is the error curve of the group (PRO allocation, ALGORITHMS.md §7);
    with ``removed``, the removed atoms are appended to it in the same order.

    ``channels`` is the number of atoms; each problem maps atoms to its own channels.
    With ``regions`` (atom → region) and ``region_keep`` (atoms to keep per region),
    only atoms of regions above their quota are candidates, and ``keep`` is their sum.

    Ties are broken toward the lower channel index, so the result is deterministic.
    """
    if keep >= channels:
        return np.arange(channels)
    states = [_State(p, lam) for p in problems]
    alive = np.arange(channels)
    every = max(1, channels // 8)
    if regions is None or region_keep is None:
        regions, region_keep = np.zeros(channels, dtype=np.int64), np.array([keep])
    left = np.bincount(regions, minlength=len(region_keep)) - region_keep  # removals still due per region
    for step in range(int(left.sum())):
        each = [s.costs(alive) for s in states]
        cost = np.zeros(len(alive))
        for c in each:
            cost += c
        cost[left[regions[alive]] <= 0] = np.inf
        j = int(np.argmin(cost))
        if trace is not None:
            trace.append(float(sum(w * c[j] for w, c in zip(scales or [1.0] * len(states), each, strict=True))))
        left[regions[alive[j]]] -= 1
        victim = int(alive[j])
        if removed is not None:
            removed.append(victim)
        alive = np.delete(alive, j)
        for s in states:
            s.remove(victim)
            if (step + 1) % every == 0 and step + 1 < channels - keep:
                s.reinvert(alive)
    return alive
