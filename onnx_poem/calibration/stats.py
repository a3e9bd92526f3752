"""Streaming calibration statistics of one consumer layer.

For sample columns ``x̄_t = [x̂_t; 1]`` (pruned-prefix input plus the bias
row) and targets ``y_t`` (original model, the consumer's own output) it
accumulates, batch by batch, in float64 (each batch's products in float32, see
:meth:`LayerStats.add_fit`):

* ``G  = Σ_t x̄_t x̄_tᵀ``          (n+1, n+1)
* ``P  = Σ_t y_t x̄_tᵀ``          (m, n+1)
* ``Gw = Σ_t d̄_t x̄_t x̄_tᵀ``,  ``Pw = Σ_t d̄_t y_t x̄_tᵀ``  (activation-weighted, POEM selection)
* the sample count,

plus two fixed-size reservoirs (Vitter's algorithm R, seeded) of sample
columns with their targets: one from fitting images (the inputs and what the
caller keeps), one from held-out images.  Memory is independent of the number of calibration samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas

from ..solvers.linalg import symmetrize


@dataclass
class Reservoir:
    """Uniform fixed-size sample of rows (algorithm R).

    Attributes:
        capacity: rows kept at most.
        seen: rows offered so far.
        (rows are kept in float32 buffers of ``capacity`` rows, allocated at the first rows and backed by
        memory only as they fill; :meth:`get` returns the filled part).
    """

    capacity: int
    rng: np.random.Generator
    seen: int = 0
    _buf: dict[str, np.ndarray] = field(default_factory=dict)
    _n: int = 0

    def add(self, **batch: np.ndarray) -> None:
        """Offer the rows of ``batch`` (every array has the same number of rows)."""
        n = len(next(iter(batch.values())))
        if n == 0:
            return
        if self.capacity == 0:  # keeps nothing: no buffers, no draws
            self.seen += n
            return
        take = min(self.capacity - self._n, n)
        if take > 0:
            need = self._n + take
            if not self._buf:
                # [R, memory] one buffer of the final size: large ones are fresh pages the kernel backs only when
                # written, so RSS grows with the rows kept, and no buffer is ever copied into a larger one (the
                # doubling this replaced held 1.5x a full ResNet-50 reservoir at each copy)
                self._buf = {k: np.empty((self.capacity, *v.shape[1:]), dtype=np.float32) for k, v in batch.items()}
            for k, v in batch.items():
                self._buf[k][self._n : need] = v[:take]
            self._n = need
        rest = np.arange(take, n)
        if rest.size:
            # row i (global index seen+i) replaces slot j ~ U{0..seen+i} when j < capacity
            j = np.floor(self.rng.random(rest.size) * (self.seen + rest + 1)).astype(np.int64)
            hit = j < self.capacity
            slots, src = j[hit], rest[hit]
            # later rows win when two replace the same slot, as in the sequential algorithm
            _, last = np.unique(slots[::-1], return_index=True)
            keep = len(slots) - 1 - last
            for k, v in batch.items():
                self._buf[k][slots[keep]] = v[src[keep]]
        self.seen += n

    def merge(self, other: Reservoir) -> Reservoir:
        """A uniform sample of both streams (``self``'s capacity and generator; neither input changes).

        The number of rows taken from ``self`` is hypergeometric (``seen`` of each stream, the
        merged size), drawn without replacement from each side's rows; each side's rows are a
        uniform sample of its stream, so the result is one of the union.
        """
        out = Reservoir(self.capacity, self.rng)
        total = self.seen + other.seen
        size = min(self.capacity, total)
        if size == 0:
            return out
        k = (
            int(self.rng.hypergeometric(self.seen, other.seen, size))
            if other.seen and self.seen
            else (size if self.seen else 0)
        )
        pick_a = np.sort(self.rng.choice(len(self), k, replace=False)) if k else np.zeros(0, np.int64)
        pick_b = np.sort(self.rng.choice(len(other), size - k, replace=False)) if size - k else np.zeros(0, np.int64)
        names = list(self._buf or other._buf)
        batch = {n: np.concatenate([self.get(n)[pick_a], other.get(n)[pick_b]]) for n in names}
        out.add(**batch)
        out.seen = total
        return out

    def __contains__(self, name: str) -> bool:
        return name in self._buf

    def get(self, name: str) -> np.ndarray:
        return self._buf[name][: self._n] if name in self._buf else np.empty((0, 0), dtype=np.float32)

    def __len__(self) -> int:
        return self._n


@dataclass
class LayerStats:
    """Accumulated statistics of one consumer (see module docstring)."""

    n1: int
    m: int
    G: np.ndarray
    P: np.ndarray
    Gw: np.ndarray
    Pw: np.ndarray
    count: int
    fit: Reservoir
    held: Reservoir
    _buf: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, n1: int, m: int, *, capacity: int, held_capacity: int, seed: int) -> LayerStats:
        rng = np.random.default_rng(seed)
        return cls(
            n1=n1,
            m=m,
            G=np.zeros((n1, n1)),
            P=np.zeros((m, n1)),
            Gw=np.zeros((n1, n1)),
            Pw=np.zeros((m, n1)),
            count=0,
            fit=Reservoir(capacity, np.random.default_rng(rng.integers(2**63))),
            held=Reservoir(held_capacity, np.random.default_rng(rng.integers(2**63))),
        )

    def add_fit(self, x: np.ndarray, y: np.ndarray, weight: np.ndarray | None, keep: dict[str, np.ndarray]) -> None:
        """Accumulate a batch of fitting samples.

        [R, speed] Each batch's products run in float32 (BLAS ``ssyrk`` for the Grams:
        the upper triangle only, half the multiply-adds) and are added to the float64
        sums; :meth:`finish` mirrors the triangles.  The inputs are float32 activations,
        so only the products and the within-batch sums round (relative error about
        ``1e-7·√rows``, far below the damping ``δ = λ·mean(diag G)`` the solves add).

        Args:
            x: ``(N, n)`` inputs (no bias column).
            y: ``(N, m)`` targets.
            weight: ``(N,)`` activation weights ``d̄_t >= 0`` or ``None`` (then ``Gw = G``).
            keep: extra per-sample arrays ``(N, ·)`` stored in the fit reservoir with ``x``.  [R, memory] ``y``
                is not stored: the solvers fit the fitting rows' post-activation targets (in ``keep``) and read
                ``y`` only through ``P`` (134 MB per full reservoir of a 2048-output ResNet-50 consumer).
        """
        xb = np.empty((x.shape[0], self.n1), dtype=np.float32)
        xb[:, :-1] = x
        xb[:, -1] = 1.0
        y32 = np.asarray(y, dtype=np.float32)
        _add_syrk(self.G, xb, self._scratch())
        self.P += y32.T @ xb
        if weight is not None:
            w32 = np.asarray(weight, dtype=np.float32)
            _add_syrk(self.Gw, xb * np.sqrt(w32)[:, None], self._scratch())
            self.Pw += (y32 * w32[:, None]).T @ xb
        self.count += x.shape[0]
        self.fit.add(x=x, **keep)

    def merge(self, other: LayerStats) -> LayerStats:
        """Statistics of both sample streams: the sums add, the reservoirs merge (:meth:`Reservoir.merge`).

        The statistics pass is a map (batches → partial statistics, each from :meth:`empty`
        and :meth:`add_fit`) and this merge, so an engine such as Ray or Dask can shard it
        (``docs/SCALING.md``); call :meth:`finish` once, on the merged result.
        """
        return LayerStats(
            n1=self.n1,
            m=self.m,
            G=self.G + other.G,
            P=self.P + other.P,
            Gw=self.Gw + other.Gw,
            Pw=self.Pw + other.Pw,
            count=self.count + other.count,
            fit=self.fit.merge(other.fit),
            held=self.held.merge(other.held),
        )

    def _scratch(self) -> np.ndarray:
        """The ``(n+1, n+1)`` float32 Fortran-ordered buffer ``ssyrk`` writes each batch's product into (zero below
        the diagonal, which ``ssyrk`` never writes).  [R, speed] One buffer per consumer instead of a new
        ``(n+1)²`` array per batch (85 MB for a 4609-input ResNet-50 consumer); :meth:`finish` drops it."""
        if self._buf is None:
            self._buf = np.zeros((self.n1, self.n1), dtype=np.float32, order="F")
        return self._buf

    def finish(self, weighted: bool) -> None:
        """Mirror the accumulated lower triangles into symmetric ``G``/``Gw`` (see :func:`_add_syrk`); make
        ``Gw``/``Pw`` equal to ``G``/``P`` when no weights were given."""
        self._buf = None
        symmetrize(self.G, upper=False)  # in place: no (n+1)² temporaries
        if weighted:
            symmetrize(self.Gw, upper=False)
        else:
            self.Gw, self.Pw = self.G, self.P


def _add_syrk(acc: np.ndarray, xb: np.ndarray, scratch: np.ndarray) -> None:
    """``acc += (xbᵀ xb)ᵀ`` on the lower triangle: the float32 ``ssyrk`` product of the rows ``xb: (N, n)``
    added to the C-ordered float64 sums ``acc: (n, n)``.

    ``ssyrk`` writes the upper triangle of a Fortran-ordered ``scratch``; ``acc.T`` has the same memory order,
    so the addition runs through both arrays in order ([R, speed]: adding it to ``acc`` itself crossed the
    memory order, 4x slower for a 4609-input consumer, measured).  Element ``(i, j)`` of the product lands on
    ``acc[j, i]``, so ``acc`` collects the lower triangle (the same sums, bit for bit); :meth:`LayerStats.finish`
    mirrors it.
    """
    prod = blas.ssyrk(1.0, xb.T, beta=0.0, c=scratch, trans=0, overwrite_c=1)
    np.add(acc.T, prod, out=acc.T)
