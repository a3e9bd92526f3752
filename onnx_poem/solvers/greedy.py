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
``H`` is updated lazily (see :class:`_State`).  While 128 or more atoms are
alive, a step removes the cheapest ``alive // 64`` of them together, ``M``
then being all their columns (:func:`block_size`).
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
    """Greedy state of one consumer: the refit ``W`` and ``H = (G + δI)⁻¹`` on the remaining columns.

    Neither is updated in full per removal ([R], speed).  Both are kept as a base
    minus pending rank-``k`` downdates, ``H = H_b − A Bᵀ`` and ``W = W_b − V Bᵀ``
    with ``B = [H_:M …]`` (the removed columns of ``H`` at their removal),
    ``A = [H_:M (H_MM)⁻¹ …]`` and ``V = [W_M (H_MM)⁻¹ …]``.  What the costs read
    is kept up to date directly: the ``k x k`` diagonal blocks ``D_c = H_cc`` and
    ``K_c = W_cᵀ W_c`` of every channel; with ``v = W_M (H_MM)⁻¹``, ``h = H_:M``,
    ``Q_c = W_cᵀ v``, ``S = vᵀ v``:

        D_c ← D_c − (h (H_MM)⁻¹ hᵀ)_cc,   K_c ← K_c − Q_c h_cᵀ − h_c Q_cᵀ + h_c S h_cᵀ

    so a removal costs ``O((m + n)·(r + k)·k)`` instead of ``O((m + n)·n·k)``.  When
    the pending rank ``r`` reaches :data:`FLUSH` (or an eighth of ``n``) the bases
    absorb it (two matrix products), the removed rows and columns are zeroed and
    ``K`` is recomputed from ``W_b``.  In exact arithmetic this is the eager
    update ``W ← W − W_M (H_MM)⁻¹ H_M:``, ``H ← H − H_:M (H_MM)⁻¹ H_M:``.
    """

    def __init__(self, p: QuadProblem, lam: float) -> None:
        self.p = p
        self.delta = damping(p.G, lam)
        n1, k = p.G.shape[0], p.k
        Gd = np.array(p.G, dtype=np.float64)
        Gd[np.diag_indices(n1)] += self.delta
        self.Hb = spd_inverse(Gd, overwrite=True)  # in Gd's buffer
        self.Wb = np.ascontiguousarray((p.P + self.delta * p.W0) @ self.Hb)
        self.limit = max(FLUSH, n1 // 8)
        self.A = np.zeros((n1, self.limit + k))  # pending factors, first ``r`` columns used
        self.B = np.zeros((n1, self.limit + k))
        self.V = np.zeros((self.Wb.shape[0], self.limit + k))
        self.r = 0
        self.dead = np.zeros(n1, dtype=bool)  # removed since the last flush (compact positions)
        self.C = (n1 - 1) // k  # channels still held in the compact arrays
        self.slot = np.arange(self.C)  # channel → its position in the compact arrays (-1: removed)
        idx = np.arange(self.C * k).reshape(self.C, k)
        self.D = self.Hb[idx[:, :, None], idx[:, None, :]]  # (C, k, k) diagonal blocks of H
        self.K = self._gram()

    def _gram(self) -> np.ndarray:
        """``(C, k, k)`` blocks ``W_cᵀ W_c`` of the (flushed) ``W_b``."""
        k = self.p.k
        w = self.Wb[:, : self.C * k].reshape(-1, self.C, k).transpose(1, 2, 0)  # (C, k, m)
        return w @ w.transpose(0, 2, 1)

    def channel(self, atoms: np.ndarray) -> np.ndarray:
        """Channel of each atom in this consumer (``-1``: absent)."""
        return atoms if self.p.index is None else self.p.index[atoms]

    def cols(self, slots: np.ndarray) -> np.ndarray:
        """``(A, k)`` compact column indices of the channels at ``slots``."""
        return slots[:, None] * self.p.k + np.arange(self.p.k)

    def costs(self, alive: np.ndarray) -> np.ndarray:
        """``ΔE_c = tr(W_c (H_cc)⁻¹ W_cᵀ) = Σ (H_cc)⁻¹ ⊙ K_c`` of each alive atom (0 where absent)."""
        ch = self.channel(alive)
        out = np.zeros(len(alive))
        present = ch >= 0
        c = self.slot[ch[present]]
        if self.p.k == 1:
            out[present] = self.K[c, 0, 0] / np.maximum(self.D[c, 0, 0], 1e-300)
            return out
        inv = np.linalg.inv(self.D[c] + 1e-300 * np.eye(self.p.k))
        out[present] = np.sum(inv * self.K[c], axis=(1, 2))
        return out

    def remove(self, atoms: np.ndarray) -> float:
        """Remove ``atoms`` together (one joint downdate) and return the joint cost
        ``ΔE_M = tr(W_M (H_MM)⁻¹ W_Mᵀ)`` of their present channels (0 if none is present here)."""
        channels = self.channel(np.asarray(atoms))
        channels = channels[channels >= 0]
        if not len(channels):
            return 0.0
        M = self.cols(self.slot[channels]).reshape(-1)
        w = len(M)
        if self.r + w > self.A.shape[1]:
            self.flush()
            if w > self.A.shape[1]:
                n1 = self.Hb.shape[0]
                self.A, self.B, self.V = np.zeros((n1, w)), np.zeros((n1, w)), np.zeros((self.Wb.shape[0], w))
            M = self.cols(self.slot[channels]).reshape(-1)
        r, k, C = self.r, self.p.k, self.C
        Br = self.B[:, :r]
        h = self.Hb[:, M] - self.A[:, :r] @ Br[M].T  # (n1, w) = H_:M
        h[self.dead] = 0.0
        wM = self.Wb[:, M] - self.V[:, :r] @ Br[M].T  # (m, w) = W_M
        inv = np.linalg.inv(h[M, :])
        a, v = h @ inv, wM @ inv
        joint = float(np.sum(v * wM))
        Q = self.Wb.T @ v - Br @ (self.V[:, :r].T @ v)  # (n1, w) = Wᵀ v
        hc, ac, Qc = (z[: C * k].reshape(C, k, w) for z in (h, a, Q))
        hT = hc.transpose(0, 2, 1)
        self.D -= ac @ hT
        QhT = Qc @ hT
        self.K += (hc @ (v.T @ v)) @ hT - QhT - QhT.transpose(0, 2, 1)
        self.dead[M] = True
        self.A[:, r : r + w], self.B[:, r : r + w], self.V[:, r : r + w] = a, h, v
        self.r = r + w
        if self.r >= self.limit:
            self.flush()
        return joint

    def flush(self) -> None:
        """Apply the pending downdates to ``H_b`` and ``W_b`` and drop the removed channels' rows and columns
        from every array (the bases, ``D``, ``K`` and the pending factors shrink with the channels left).

        [R, speed] Compacting keeps each removal's cost proportional to the columns still alive: PRO's curves
        remove up to 90 % of a group, and flushing full-size bases was 36 % of ResNet-50's greedy time.
        """
        r = self.r
        if r:  # Hbᵀ −= B Aᵀ and Wbᵀ −= B Vᵀ on the Fortran views of the C-ordered bases (in place)
            B = np.asfortranarray(self.B[:, :r])
            blas.dgemm(-1.0, B, np.asfortranarray(self.A[:, :r]), beta=1.0, c=self.Hb.T, overwrite_c=True, trans_b=1)
            blas.dgemm(-1.0, B, np.asfortranarray(self.V[:, :r]), beta=1.0, c=self.Wb.T, overwrite_c=True, trans_b=1)
            self.r = 0
        keep = np.flatnonzero(~self.dead)
        k = self.p.k
        alive = ~self.dead[: self.C * k : k]  # compact channels still held
        self.Hb = np.ascontiguousarray(self.Hb[np.ix_(keep, keep)])
        self.Wb = np.ascontiguousarray(self.Wb[:, keep])
        self.D = np.ascontiguousarray(self.D[alive])
        new_slot = np.where(alive, np.cumsum(alive) - 1, -1)  # old compact slot → new one
        held = self.slot >= 0
        self.slot[held] = new_slot[self.slot[held]]
        self.C = int(alive.sum())
        n1 = len(keep)
        self.A, self.B = np.zeros((n1, self.limit + k)), np.zeros((n1, self.limit + k))
        self.dead = np.zeros(n1, dtype=bool)
        self.K = self._gram()


#: pending rank of the lazy downdates before they are applied to ``H`` (at least; or ``(n+1)/8``)
FLUSH = 64

#: a greedy step removes one atom per this many still alive (at least one), see :func:`block_size`
BLOCK_DIVISOR = 64


def block_size(alive: int) -> int:
    """Atoms one greedy step removes together when ``alive`` are left: ``max(1, alive // BLOCK_DIVISOR)``.

    [R, speed] Groups of up to 127 atoms (every group of the CIFAR ResNets) are eliminated one atom at a time, as
    §2 writes it. Wider ones remove the cheapest ``alive // 64`` atoms (at most 1.6 % of those left) by one joint
    downdate, their costs taken at the step's start (SparseGPT/OBC-style blocks): each step reads ``H`` and ``W``
    once instead of once per atom, and the costs are recomputed ``~64·ln(n / kept)`` times instead of once per
    removal. The downdate is exact for the block; only the choice ignores the interactions inside it.
    """
    return max(1, alive // BLOCK_DIVISOR)


def _block(cost: np.ndarray, region: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """Positions of the atoms one step removes: ``argmin(cost)`` first (ties to the lower position), then the next
    cheapest finite ``cost`` entries, up to ``size`` in all, that no region's quota ``left`` forbids."""
    first = int(np.argmin(cost))
    pick = [first]
    quota = left.copy()
    quota[region[first]] -= 1
    if size > 1:
        for j in np.argsort(cost, kind="stable"):
            if len(pick) == size or not np.isfinite(cost[j]):
                break
            if j != first and quota[region[j]] > 0:
                quota[region[j]] -= 1
                pick.append(int(j))
    return np.array(pick, dtype=np.int64)


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
    a step of several atoms (:func:`block_size`) appends its joint cost shared out in
    proportion to the members' own costs, so the curve is exact at every step's end;
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
    if regions is None or region_keep is None:
        regions, region_keep = np.zeros(channels, dtype=np.int64), np.array([keep])
    left = np.bincount(regions, minlength=len(region_keep)) - region_keep  # removals still due per region
    w = scales or [1.0] * len(states)
    while left.sum() > 0:
        each = [s.costs(alive) for s in states]
        cost = np.zeros(len(alive))
        for c in each:
            cost += c
        cost[left[regions[alive]] <= 0] = np.inf
        pick = _block(cost, regions[alive], left, block_size(len(alive)))
        victims = alive[pick]
        joint = [s.remove(victims) for s in states]
        if trace is not None:
            alone = np.array([sum(x * c[j] for x, c in zip(w, each, strict=True)) for j in pick])
            if len(pick) == 1:
                trace.append(float(alone[0]))
            else:  # the block's joint cost, shared out in proportion to the members' own costs
                total = float(sum(x * e for x, e in zip(w, joint, strict=True)))
                trace.extend(
                    (total * alone / alone.sum() if alone.sum() > 0 else np.full(len(pick), total / len(pick))).tolist()
                )
        np.subtract.at(left, regions[victims], 1)
        if removed is not None:
            removed.extend(int(v) for v in victims)
        alive = np.delete(alive, pick)
    return alive
