"""Neuro-Unification (``--method nu``): remove a unit by merging it into the unit it behaves most like.

ALGORITHMS.md §3 [R from the NU abstract].  For input channels ``p, q`` of a consumer with
effective weights ``W̄`` (``k`` columns per channel, the activations ``a_p`` of channel ``p``
being its ``k`` im2col columns over all sampled rows):

    r(p → q)   = min_{α,β} ‖a_p − α a_q − β‖²  = V_pp − V_pq² / V_qq
    cost(p → q) = ‖W̄[:, p]‖² · r(p → q)          (summed over the group's consumers)

with ``V`` the centred second moments over rows and kernel offsets (from the consumer's
Gram ``G``: ``V_pq = Σ_o G[(p,o),(q,o)] − N'·m_p·m_q``, ``N' = count·k``).  Merging ``p`` into
``q`` folds ``p``'s outgoing weights into ``q``'s: ``W̄[:, q] += α W̄[:, p]`` and the bias gains
``β Σ_o W̄[:, (p,o)]``, ``α = V_pq / V_qq``, ``β = m_p − α m_q``.

Selection is greedy: the cheapest merge of a live unit into another live unit of the same
region, its weights folded in, repeated until each region's quota is met.  Reconstruction
merges every removed channel of a consumer into its best *kept* channel (a removed unit's
selection-time partner may itself have been removed later).
"""

from __future__ import annotations

import numpy as np

from .reconstruct import LayerData, kept_columns


def channel_moments(d: LayerData) -> tuple[np.ndarray, np.ndarray]:
    """``(V, m)``: centred second moments ``(C, C)`` of the consumer's input channels summed over the
    kernel offsets, and their means ``(C,)``."""
    n = d.G.shape[0] - 1
    C = n // d.k
    count = max(float(d.G[-1, -1]), 1.0)
    G4 = d.G[:n, :n].reshape(C, d.k, C, d.k)
    S = np.einsum("iojo->ij", G4)
    means = d.G[:n, -1].reshape(C, d.k).sum(axis=1) / (count * d.k)
    V = S - count * d.k * np.outer(means, means)
    return V, means


def residuals(V: np.ndarray) -> np.ndarray:
    """``R[p, q] = V_pp − V_pq² / V_qq``: what is left of channel ``p`` after the best affine fit from ``q``
    (``V_pp`` where ``q`` carries no variance); the diagonal is 0 (callers exclude merging a unit into itself)."""
    diag = np.diag(V).copy()
    safe = np.where(diag > 1e-12 * max(float(diag.max(initial=0.0)), 1e-300), diag, np.inf)
    R = diag[:, None] - V * V / safe[None, :]
    R = np.maximum(R, 0.0)
    np.fill_diagonal(R, 0.0)
    return R


def nu_select(layers: list[LayerData], channels: int, regions: np.ndarray, region_keep: np.ndarray) -> np.ndarray:
    """Sorted kept atoms by greedy Neuro-Unification (see the module docstring)."""
    consumers = [_Consumer(d, channels) for d in layers]
    cost = sum((c.rows(np.arange(channels)) for c in consumers), np.zeros((channels, channels)))
    np.fill_diagonal(cost, np.inf)
    cost[regions[:, None] != regions[None, :]] = np.inf  # merges stay within a region
    alive = np.ones(channels, dtype=bool)
    left = np.bincount(regions, minlength=len(region_keep)) - region_keep
    for _ in range(int(max(left.sum(), 0))):
        open_ = alive & (left[regions] > 0)
        masked = np.where(open_[:, None] & alive[None, :], cost, np.inf)
        p, q = divmod(int(np.argmin(masked)), channels)
        if not np.isfinite(masked[p, q]):  # no live partner in the region: drop the first open unit unmerged
            p, q = int(np.flatnonzero(open_)[0]), -1
        alive[p] = False
        left[regions[p]] -= 1
        if q >= 0:
            for c in consumers:
                c.merge(p, q)
            row = sum((c.rows(np.array([q])) for c in consumers), np.zeros((1, channels)))[0]
            row[q] = np.inf
            row[regions != regions[q]] = np.inf
            cost[q] = row
    return np.flatnonzero(alive)


class _Consumer:
    """One consumer's part of the merge costs, its weights updated as units merge."""

    def __init__(self, d: LayerData, atoms: int) -> None:
        V, _ = channel_moments(d)
        C = V.shape[0]
        self.idx = np.arange(C) if d.index is None else np.asarray(d.index, dtype=np.int64)
        self.W = d.W0[:, : C * d.k].reshape(d.W0.shape[0], C, d.k).copy()
        self.R = residuals(V)
        self.var = np.diag(V).copy()
        diag = self.var[None, :]
        self.alpha = np.divide(V, diag, out=np.zeros_like(V), where=diag > 0)
        self.atoms = atoms

    def rows(self, atoms: np.ndarray) -> np.ndarray:
        """``cost(p → q)`` for ``p`` in ``atoms``, every ``q``: ``‖W̄_p‖²·r(p → q)``; ``‖W̄_p‖²·V_pp`` where
        ``q`` is absent here (``p`` dropped unmerged), 0 where ``p`` is absent."""
        out = np.zeros((len(atoms), self.atoms))
        cp = self.idx[atoms]
        here = cp >= 0
        if not here.any():
            return out
        norms = np.einsum("mck,mck->c", self.W[:, cp[here]], self.W[:, cp[here]])
        present = self.idx >= 0
        block = np.zeros((int(here.sum()), self.atoms))
        block[:, present] = self.R[np.ix_(cp[here], self.idx[present])] * norms[:, None]
        block[:, ~present] = (self.var[cp[here]] * norms)[:, None]
        out[here] = block
        return out

    def merge(self, p: int, q: int) -> None:
        """Fold unit ``p``'s outgoing weights into ``q``'s (where both are present)."""
        cp, cq = self.idx[p], self.idx[q]
        if cp >= 0 and cq >= 0:
            self.W[:, cq] += self.alpha[cp, cq] * self.W[:, cp]


def nu_merge(d: LayerData, keep: np.ndarray) -> np.ndarray:
    """``W: (m, |keep|·k + 1)``: the consumer's weights on the kept channels ``keep`` with every removed
    channel merged into its best kept channel (the bias takes the offsets)."""
    n1 = d.G.shape[0]
    C = (n1 - 1) // d.k
    V, means = channel_moments(d)
    W = d.W0[:, : C * d.k].reshape(d.W0.shape[0], C, d.k).copy()
    bias = d.W0[:, -1].copy()
    kept = np.asarray(keep, dtype=np.int64)
    removed = np.setdiff1d(np.arange(C), kept)
    if len(kept) and len(removed):
        R = residuals(V)[np.ix_(removed, kept)]
        partner = kept[np.argmin(R, axis=1)]
        for p, q in zip(removed, partner, strict=True):
            alpha = V[p, q] / V[q, q] if V[q, q] > 0 else 0.0
            beta = means[p] - alpha * means[q]
            W[:, q] += alpha * W[:, p]
            bias += beta * W[:, p].sum(axis=1)
    cols = kept_columns(kept, d.k, n1)[:-1]
    return np.concatenate([W.reshape(W.shape[0], -1)[:, cols], bias[:, None]], axis=1)
