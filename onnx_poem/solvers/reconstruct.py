"""Weight reconstruction of a consumer after its input channels were pruned.

Least squares (REAP):  ``W_ls = (P_S + δW0_S)(G_SS + δI)⁻¹``, the pre-activation
optimum on the kept columns S (bias column always kept).

POEM [ALGORITHMS.md §4, R]: minimise the post-activation error

    E(W) = Σ_t ‖ f(W x̄_t + ŝ_t) − z_t ‖²,   z_t = f(y_t + s_t)   (original model)

with ``ŝ`` the residual offset seen by the pruned model.  For piecewise-linear
``f`` (ReLU, LeakyReLU, Clip, HardSigmoid) we split ``U ≈ W X̄ + Ŝ`` and
alternate

    U-step  u = argmin (f(u) − z)² + λ (u − r)²   (closed form on each linear piece)
    W-step  W = argmin λ‖U − Ŝ − W X̄‖² + μ (W − W_ls) Ĝ (W − W_ls)ᵀ

on a reservoir of fitting samples, for λ ∈ {1, 10, 100} (:data:`RELAX_SCHEDULE`).  For smooth ``f``
(sigmoid, tanh, GELU, SiLU, HardSwish, softplus, ELU) a damped Gauss-Newton
with one curvature matrix shared by the outputs minimises the same objective.  The ``μ`` term (``Ĝ``
the Gram rescaled to the reservoir size) is the increase of the least-squares
error, so POEM is regularised toward ``W_ls``.  Because such fits overfit
(measured: held-out error worse than LS on 6 of 8 layers without it), the
final weights are chosen *per output* among ``W_ls``, the activation-weighted
least squares ``W_w`` and blends ``W_ls + a(W_poem − W_ls)``, by the
post-activation error on held-out samples from images not used for fitting.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import t as student_t

from ..errors import SolverError
from .activations import apply, derivative, piecewise
from .linalg import damping, ridge_solve, spd_inverse, spd_solve


@dataclass(frozen=True)
class Samples:
    """Reservoir rows of one consumer.

    Attributes:
        X: ``(R, n)`` pruned-prefix inputs (no bias column).
        Y: ``(R, m)`` original consumer outputs, or ``None`` (the fitting rows: no solver reads them, and a
            ResNet-50 consumer's would take 134 MB).
        S: ``(R, m)`` residual offset in the pruned model (a read-only broadcast zero if the consumer has none).
        Z: ``(R, m)`` original post-activation outputs ``f(y + s)``.
    """

    X: np.ndarray
    Y: np.ndarray | None
    S: np.ndarray
    Z: np.ndarray

    def __len__(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class LayerData:
    """Everything a solver knows about one consumer (no ONNX).

    ``G, Gw: (n+1, n+1)``, ``P, Pw, W0: (m, n+1)``, ``k`` columns per channel,
    ``count`` samples behind ``G``, ``index``: atom → channel of this consumer
    (``-1`` absent; ``None`` the identity).
    """

    G: np.ndarray
    P: np.ndarray
    Gw: np.ndarray
    Pw: np.ndarray
    W0: np.ndarray
    k: int
    count: int
    activation: str
    act_params: tuple[float, ...]
    fit: Samples
    held: Samples
    index: np.ndarray | None = None


@dataclass
class Reconstruction:
    """Result for one consumer: ``W: (m, |S|·k + 1)``, the least-squares weights when they were
    computed (``W_ls``, the same shape), and diagnostics."""

    W: np.ndarray
    W_ls: np.ndarray | None = None
    choice: dict[str, float] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)


def kept_columns(keep: np.ndarray, k: int, n1: int) -> np.ndarray:
    """Column indices of the kept channels plus the bias column ``n1 - 1``."""
    return np.concatenate([(keep[:, None] * k + np.arange(k)).reshape(-1), [n1 - 1]])


def least_squares(d: LayerData, cols: np.ndarray, lam: float, *, weighted: bool = False) -> np.ndarray:
    """Damped least squares on columns ``cols`` → ``(m, len(cols))``."""
    G = d.Gw if weighted else d.G
    P = d.Pw if weighted else d.P
    Gs = G[np.ix_(cols, cols)]
    return ridge_solve(Gs, P[:, cols], d.W0[:, cols], damping(Gs, lam), overwrite=True)


def _bar(X: np.ndarray, cols: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """``[X_cols, 1]``: the rows ``X: (R, n)`` on the kept columns ``cols`` (bias last) → ``(R, |cols|)``."""
    xb: np.ndarray = np.empty((X.shape[0], len(cols)), dtype=dtype)
    xb[:, :-1] = X[:, cols[:-1]]
    xb[:, -1] = 1.0
    return xb


#: bytes of the rows the row-blocked helpers (:func:`_pre`, :func:`_gram`, :func:`_relaxation_rows`) copy at a time
BLOCK_BYTES = 32 << 20


def _row_blocks(rows: int, row_bytes: int) -> Iterator[slice]:
    """Consecutive slices of ``rows`` rows, each about :data:`BLOCK_BYTES` of rows of ``row_bytes`` bytes."""
    step = max(1, BLOCK_BYTES // row_bytes)
    return (slice(i, i + step) for i in range(0, rows, step))


#: column blocks start at multiples of this (see :func:`_column_blocks`)
COLUMN_TILE = 64


def _column_blocks(columns: int, column_bytes: int) -> list[slice]:
    """Consecutive slices of ``columns`` columns, each about :data:`BLOCK_BYTES` of columns of ``column_bytes`` bytes.

    Every block starts at a multiple of :data:`COLUMN_TILE` and the last one runs to the end (none narrower
    than the tile unless ``columns`` is: NumPy sums a one-column array along its rows in another order than a
    wider one's columns).  A block's product equals the unblocked product's columns to rounding: OpenBLAS
    computes a partial register tile with another kernel, and where its thread split of the whole product
    puts a column at another place in a tile than the block's product does, the sum rounds differently
    (~1e-17 on a 1001-column product in 64-column blocks; bit for bit on ResNet-50's 2048 outputs in blocks
    of 512, checked).
    """
    step = max(COLUMN_TILE, BLOCK_BYTES // max(column_bytes, 1) // COLUMN_TILE * COLUMN_TILE)
    edges = [e for e in range(0, columns, step) if e == 0 or columns - e >= COLUMN_TILE] + [columns]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


def _pre(X: np.ndarray, cols: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Pre-activations ``[X_cols, 1] Wᵀ`` of the rows ``X: (R, n)`` in float64 → ``(R, m)``.

    [R, memory] Computed in row blocks of :data:`BLOCK_BYTES`, so the float64 copy of the rows, ``(R, |cols|)``
    (211 MB for 8192 held-out rows of a 3227-input ResNet-50 consumer), never exists whole.  On OpenBLAS each
    block's product equals the whole product's rows bit for bit for ResNet-50's shapes (checked); for small
    blocks BLAS may take another kernel (equal to rounding).
    """
    out = np.empty((X.shape[0], W.shape[0]))
    for b in _row_blocks(X.shape[0], 8 * len(cols)):
        out[b] = _bar(X[b], cols) @ W.T
    return out


def _relaxation_rows(X: np.ndarray, cols: np.ndarray, consume: bool) -> np.ndarray:
    """``[X_cols, 1]`` in float32, ``(R, |cols|)``: the relaxation's rows.

    [R, memory] With ``consume`` (nothing reads the reservoir's rows ``X`` afterwards) the kept columns are
    moved to the front of ``X``'s own rows, block by block, and the ones column after them; the relaxation's
    products read that view (row stride ``n``) bit for bit as a contiguous copy (BLAS packs both into the same
    panels; tested), so a full ResNet-50 reservoir needs no second copy of its rows (211 MB for 16384 rows ×
    3227 kept of 4609 inputs).  A copy where ``X`` has no room for the ones column (every input kept) or is not
    a writeable float32 buffer.
    """
    k = len(cols)
    if not consume or X.dtype != np.float32 or not X.flags.writeable or not X.flags.c_contiguous or X.shape[1] < k:
        return _bar(X, cols, dtype=np.float32)
    for b in _row_blocks(X.shape[0], 4 * k):
        X[b, : k - 1] = X[b, cols[:-1]]  # the fancy index copies the block first
    X[:, k - 1] = 1.0
    return X[:, :k]


def _gram(X: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``X̄ᵀX̄`` of the rows ``X: (R, n)`` on ``cols`` (``X̄ = [X_cols, 1]``) in float64 → ``(|cols|, |cols|)``.

    [R, memory] Summed over row blocks of :data:`BLOCK_BYTES`, so the float64 copy of the rows never exists
    whole (423 MB for a full 16384-row reservoir of a 3227-input ResNet-50 consumer).  The sum's rounding
    differs from one product over all rows (about 1e-15 relative: BLAS orders the row sums differently).
    """
    out = np.zeros((len(cols), len(cols)))
    for b in _row_blocks(X.shape[0], 8 * len(cols)):
        xb = _bar(X[b], cols)
        out += xb.T @ xb
    return out


def _post_rows(d: LayerData, pre: np.ndarray, s: Samples) -> np.ndarray:
    """Squared post-activation errors ``(f(pre_ti + ŝ_ti) − z_ti)²`` of pre-activations ``pre: (R, m)`` → ``(R, m)``."""
    return (apply(d.activation, d.act_params, pre + s.S) - s.Z) ** 2


def post_errors(d: LayerData, W: np.ndarray, cols: np.ndarray, s: Samples) -> np.ndarray:
    """Per-output squared post-activation error ``Σ_t (f(w_i x̄_t + ŝ_ti) − z_ti)²`` → ``(m,)``."""
    return np.sum(_post_rows(d, _pre(s.X, cols, W), s), axis=0)


def relative_errors(d: LayerData, W: np.ndarray, cols: np.ndarray, s: Samples) -> tuple[float, float]:
    """(pre-activation, post-activation) relative squared errors of ``W`` on samples ``s`` (with targets ``Y``)."""
    if s.Y is None:
        raise SolverError("relative errors need the rows' targets Y (the held-out rows have them)")
    if len(s) == 0:
        return float("nan"), float("nan")
    pre = _pre(s.X, cols, W)  # one product for both errors
    e_pre = float(np.sum((pre - s.Y) ** 2) / max(float(np.sum(s.Y.astype(np.float64) ** 2)), 1e-30))
    post = np.sum(_post_rows(d, pre, s), axis=0)
    e_post = float(np.sum(post) / max(float(np.sum(s.Z.astype(np.float64) ** 2)), 1e-30))
    return e_pre, e_post


def _u_step(
    r: np.ndarray, z: np.ndarray, lam: float, pieces: Sequence[tuple[float, float, float, float]]
) -> np.ndarray:
    """Elementwise ``argmin_u (f(u) − z)² + λ(u − r)²`` over the linear pieces of ``f``.

    On piece ``f(u) = a·u + b, lo ≤ u ≤ hi`` the minimiser is
    ``clip((a(z − b) + λr) / (a² + λ), lo, hi)``; the cheapest piece wins. The
    arrays are large (reservoir rows × outputs), so every step works in place.
    ReLU, the common case, takes :func:`_u_step_relu` (the same values, bit for bit).
    """
    if list(pieces) == piecewise("relu", ()):
        return _u_step_relu(r, z, lam)
    return _u_step_pieces(r, z, lam, pieces)


def _u_step_pieces(
    r: np.ndarray, z: np.ndarray, lam: float, pieces: Sequence[tuple[float, float, float, float]]
) -> np.ndarray:
    """:func:`_u_step` over any list of pieces."""
    best = np.empty_like(r)
    best_cost = np.full(r.shape, np.inf)
    u, cost, tmp = np.empty_like(r), np.empty_like(r), np.empty_like(r)
    better = np.empty(r.shape, dtype=bool)
    for lo, hi, a, b in pieces:
        np.subtract(z, b, out=u)
        u *= a / (a * a + lam)
        np.multiply(r, lam / (a * a + lam), out=tmp)
        u += tmp
        np.clip(u, lo, hi, out=u)
        np.multiply(u, a, out=cost)
        cost += b
        cost -= z
        np.square(cost, out=cost)
        np.subtract(u, r, out=tmp)
        np.square(tmp, out=tmp)
        tmp *= lam
        cost += tmp
        np.less(cost, best_cost, out=better)
        np.copyto(best, u, where=better)
        np.copyto(best_cost, cost, where=better)
    return best


def _u_step_relu(r: np.ndarray, z: np.ndarray, lam: float) -> np.ndarray:
    """:func:`_u_step` for ReLU with the operations that do not cancel (``0·u``, ``+ 0``) left out.

    Piece ``u ≤ 0``: ``u₀ = min(r, 0)``, cost ``z² + λ(u₀ − r)²``; piece ``u ≥ 0``:
    ``u₁ = max(z/(1 + λ) + r·λ/(1 + λ), 0)``, cost ``(u₁ − z)² + λ(u₁ − r)²``; ``u₁`` where it is
    strictly cheaper.  [R, speed] The same float32 operations as the generic loop on the terms that
    remain, in row blocks of about 32 K elements that stay in cache: 2-3x faster, equal bit for bit
    (tested).
    """
    c1, c2 = 1.0 / (1.0 + lam), lam / (1.0 + lam)
    out = np.empty_like(r)
    rows = max(1, (1 << 15) // max(int(np.prod(r.shape[1:])), 1))
    for i in range(0, len(r), rows):
        rb, zb = r[i : i + rows], z[i : i + rows]
        u0 = np.minimum(rb, 0)
        t = u0 - rb
        np.square(t, out=t)
        t *= lam
        cost0 = np.square(zb)
        cost0 += t
        u1 = zb * c1
        np.multiply(rb, c2, out=t)
        u1 += t
        np.maximum(u1, 0, out=u1)
        cost1 = u1 - zb
        np.square(cost1, out=cost1)
        np.subtract(u1, rb, out=t)
        np.square(t, out=t)
        t *= lam
        cost1 += t
        np.copyto(u0, u1, where=cost1 < cost0)
        out[i : i + rows] = u0
    return out


def _gauss_newton(
    d: LayerData, X: np.ndarray, S: np.ndarray, Z: np.ndarray, W_ls: np.ndarray, Gn: np.ndarray, mu: float
) -> np.ndarray:
    """Smooth ``f``: damped Gauss-Newton with one curvature matrix shared by all outputs.

    Objective ``E(W) = ‖f(X Wᵀ + S) − Z‖² + μ tr((W − W_ls) Gn (W − W_ls)ᵀ)``; step
    ``ΔW = −g H⁻¹`` with ``g = (f'(Ỹ) ⊙ (f(Ỹ) − Z))ᵀ X + μ (W − W_ls) Gn`` and
    ``H = Xᵀ diag(mean_i f'(Ỹ)²) X + μ Gn + ρI``; a step is taken only if ``E`` drops
    (halving it up to three times), else the iteration stops.
    """
    kind, params = d.activation, d.act_params

    def energy(W: np.ndarray) -> float:
        r = apply(kind, params, X @ W.T + S) - Z
        dW = W - W_ls
        return float(np.sum(r * r) + mu * np.sum((dW @ Gn) * dW))

    W, e = W_ls.copy(), energy(W_ls)
    # Levenberg-style damping of the curvature (it only shortens steps): a float32-accumulated Gn of a
    # layer with about as many rows as inputs can be indefinite by rounding
    ridge = RIDGE * max(float(np.mean(np.diag(Gn))), 1e-12)
    diag = np.diag_indices(len(Gn))
    for _ in range(10):
        pre = X @ W.T + S
        fp = derivative(kind, params, pre)
        g = (fp * (apply(kind, params, pre) - Z)).T @ X + mu * ((W - W_ls) @ Gn)
        H = (X * np.mean(fp * fp, axis=1)[:, None]).T @ X
        H += mu * Gn
        H[diag] += ridge
        step = spd_solve(H, g)
        for alpha in (1.0, 0.5, 0.25, 0.125):
            e_new = energy(W - alpha * step)
            if e_new < e:
                W, e = W - alpha * step, e_new
                break
        else:
            break
    return W


def poem_fit(
    d: LayerData, cols: np.ndarray, W_ls: np.ndarray, *, mu: float, consume: bool = False
) -> np.ndarray | None:
    """POEM weights on the fit reservoir (relaxation, or Gauss-Newton for smooth ``f``).

    ``consume``: the fit reservoir's rows ``d.fit.X`` may be overwritten (see :func:`_relaxation_rows`).

    The W-step matrix is ``(λ X̄ᵀX̄ + μ Ĝ + (λ + μ) ρ I)⁻¹``, the ridge ``ρ = RIDGE·mean(diag Ĝ)``
    pulling toward ``W_ls`` (the float32-accumulated ``Ĝ`` of a layer with about as many
    rows as inputs can be indefinite by rounding; a ridge toward 0 would bias the fit).
    [R, speed] When the reservoir holds every fitting row (up to ``capacity`` rows, the
    usual case), ``X̄ᵀX̄ = Ĝ = G_SS`` and the matrix is ``H_0 / (λ + μ)`` with
    ``H_0 = (G_SS + ρI)⁻¹``: one inverse for every ``λ``, and no ``X̄ᵀX̄`` product.
    """
    if len(d.fit) == 0:
        return None
    Gn = d.G[np.ix_(cols, cols)] * (len(d.fit) / max(d.count, 1))
    pieces = piecewise(d.activation, d.act_params)
    if pieces is None:
        X = _bar(d.fit.X, cols)
        return _gauss_newton(d, X, d.fit.S.astype(np.float64), d.fit.Z.astype(np.float64), W_ls, Gn, mu)
    # the relaxation's products run in float32 (rows × inputs × outputs, and outputs × inputs²);
    # the normal matrices are formed and inverted in float64
    whole = len(d.fit) == d.count
    if not whole:
        # X̄ᵀX̄ in row blocks (see _gram), and before _relaxation_rows, which may overwrite the rows it reads
        XtX = _gram(d.fit.X, cols)
    X32 = _relaxation_rows(d.fit.X, cols, consume)
    # read only (no copy of the reservoir's float32 arrays)
    S32, Z32 = np.asarray(d.fit.S, dtype=np.float32), np.asarray(d.fit.Z, dtype=np.float32)
    rho = RIDGE * max(float(np.mean(np.diag(Gn))), 1e-12)
    diag = np.diag_indices(len(cols))
    if whole:
        A = Gn.copy()
        A[diag] += rho
        H0 = spd_inverse(A, overwrite=True)  # (n, n) buffers: Gn, H0 and one float32 copy at a time
    W = W_ls.copy()
    WG = W_ls @ Gn
    for lam, iters in RELAX_SCHEDULE:
        # W-step: argmin λ‖U − Ŝ − W X̄‖² + μ tr((W − W_ls) Ĝ (W − W_ls)ᵀ) + (λ + μ) ρ ‖W − W_ls‖²
        if whole:
            H32 = np.multiply(H0, 1.0 / (lam + mu), dtype=np.float32)
        else:
            A = lam * XtX
            A += mu * Gn
            A[diag] += (lam + mu) * rho
            H32 = spd_inverse(A, overwrite=True).astype(np.float32)
        base = (mu * WG + (lam + mu) * rho * W_ls).astype(np.float32)
        W32 = W.astype(np.float32)
        for _ in range(iters):
            R = X32 @ W32.T
            R += S32
            U = _u_step(R, Z32, lam, pieces)
            U -= S32
            W_new = (lam * (U.T @ X32) + base) @ H32
            step = float(np.linalg.norm(W_new - W32))
            W32 = W_new
            if step <= RELAX_TOL * float(np.linalg.norm(W32)):
                break  # [R, speed] converged for this λ (λ = 100 moves W by ~2e-4 per iteration)
        W = W32.astype(np.float64)
    return W


def channel_scales(d: LayerData, keep: np.ndarray, lam: float) -> np.ndarray:
    """ThiNet reconstruction: ``W_c ← r_c W_c`` per kept channel (and the bias), ``r`` by least squares.

    With contributions ``v_c = W_c x_c``, ``min_r ‖y − Σ_c r_c v_c‖²`` has normal
    equations ``K r = t``, ``K_cd = tr(W_c G_cd W_dᵀ)``, ``t_c = Σ_{ij∈c} W_ij P_ij``
    (the bias column is one more "channel").  Returns ``(m, |keep|·k + 1)``.
    """
    cols = kept_columns(keep, d.k, d.G.shape[0])
    blocks = np.concatenate([np.repeat(np.arange(len(keep)), d.k), [len(keep)]])  # column → block
    M = d.W0[:, cols]
    full = (M.T @ M) * d.G[np.ix_(cols, cols)]
    nb = len(keep) + 1
    K = np.zeros((nb, nb))
    np.add.at(K, (blocks[:, None], blocks[None, :]), full)
    t = np.bincount(blocks, weights=np.sum(M * d.P[:, cols], axis=0), minlength=nb)
    r = ridge_solve(K, t[None, :], np.ones((1, nb)), damping(K, lam))[0]
    return M * r[blocks][None, :]


def reconstruct(
    d: LayerData, keep: np.ndarray, *, method: str, lam: float = 0.01, consume: bool = False
) -> Reconstruction:
    """Reconstruct consumer weights on kept channels ``keep`` with ``method``.

    ``method``: ``none`` (original weights), ``scale`` (ThiNet), ``nu`` (removed channels merged into kept
    ones, Neuro-Unification), ``ls`` (REAP) or ``poem``.  ``consume``: the caller reads ``d.fit.X`` no more,
    and POEM's last fit may overwrite it instead of copying it (memory).

    Raises:
        SolverError: the weights came out non-finite (no fallback can absorb it; the
            caller leaves the group unpruned with this reason).
    """
    out = _reconstruct(d, keep, method=method, lam=lam, consume=consume)
    if not np.isfinite(out.W).all():
        raise SolverError(f"{method} reconstruction gave non-finite weights ({len(keep)} kept channels)")
    return out


def _reconstruct(d: LayerData, keep: np.ndarray, *, method: str, lam: float, consume: bool) -> Reconstruction:
    n1 = d.G.shape[0]
    cols = kept_columns(keep, d.k, n1)
    W_none = d.W0[:, cols]
    if method == "none":
        return Reconstruction(W_none)
    if method == "scale":
        return Reconstruction(channel_scales(d, keep, lam))
    if method == "nu":
        from .merge import nu_merge  # merge builds on this module's LayerData

        return Reconstruction(nu_merge(d, keep))
    W_ls = least_squares(d, cols, lam)
    if method == "ls" or d.activation == "identity":
        return Reconstruction(W_ls, W_ls)
    out = Reconstruction(W_ls, W_ls)
    if len(d.held) == 0:
        out.fallbacks.append("no held-out samples: kept least squares")
        return out
    candidates: dict[str, np.ndarray] = {"ls": W_ls, "wls": least_squares(d, cols, lam, weighted=True)}
    for j, mu in enumerate(POEM_MUS):
        W_p = poem_fit(d, cols, W_ls, mu=mu, consume=consume and j == len(POEM_MUS) - 1)
        if W_p is None:
            out.fallbacks.append("no fitting samples: kept least squares")
            return out
        for a in (0.5, 1.0):
            candidates[f"poem(mu={mu},a={a})"] = W_ls + a * (W_p - W_ls)
    pick = choose_per_output(d, candidates, cols)
    names = list(candidates)
    W = np.stack([candidates[names[p]][i] for i, p in enumerate(pick)])
    out.W = W
    out.choice = {n: float(np.mean(pick == j)) for j, n in enumerate(names)}
    if len(d.held) < MIN_CHOICE_ROWS:
        out.fallbacks.append(f"{len(d.held)} selection rows: least squares unless a fit is clearly better")
    return out


#: the relaxation's ``(λ, at most this many iterations)``, in order.  [R, speed; session 24] Was eight
#: iterations for each λ: on ResNet-50 (random weights) all 24 ran for every consumer (the steps never fell
#: below :data:`RELAX_TOL`), 3.1 T multiply-adds (2.6 T in ``rows × n × m`` products), 5.9 forward passes; on
#: ResNet-20 (the README demo) the held-out post-activation error relative to least squares was 0.9578 with
#: 167 iterations over its layers, 0.9590 with 72 under this schedule (mean over layers, the best of least
#: squares and the two blends per output): 3 % of POEM's gain for 43 % of the iterations (RESULTS.md, [R] 24)
RELAX_SCHEDULE = ((1.0, 5), (10.0, 2), (100.0, 1))
#: the relaxation moves on to the next λ once an iteration changes W by less than this (relative)
RELAX_TOL = 1e-3
#: relative ridge of the POEM W-step (toward least squares; see :func:`poem_fit`)
RIDGE = 1e-4
#: regularisation strengths of the POEM fits toward least squares (each costs a full relaxation)
POEM_MUS = (0.3,)
#: one-sided level (that of a 2-sigma normal test) a candidate's improvement over least squares must reach
CHOICE_LEVEL = 0.97725
#: below this many selection rows the report notes that least squares was the default
MIN_CHOICE_ROWS = 64


def choose_per_output(d: LayerData, candidates: dict[str, np.ndarray], cols: np.ndarray) -> np.ndarray:
    """Index into ``candidates`` (the first is least squares) per output → ``(m,)``.

    [R, measured] Per output ``i`` and selection row ``t`` the paired difference
    ``δ_ti = e_ls,ti − e_c,ti`` of post-activation squared errors; candidate ``c``
    may replace least squares only if its mean improvement is significant,
    ``mean_t δ_ti > q · sd_t(δ_ti) / √R`` with ``q`` the Student-t quantile at
    :data:`CHOICE_LEVEL` for ``R − 1`` degrees of freedom (2 for many rows), and then the largest mean
    improvement wins.  With few selection rows nothing is significant and least
    squares stays (MNIST with 16 calibration images: picking the smallest
    held-out error on 2 images took real agreement from 99 % to 71 %).
    """
    s = d.held
    names = list(candidates)
    rows = len(s)
    q = float(student_t.ppf(CHOICE_LEVEL, rows - 1)) if rows > 1 else np.inf
    m = candidates[names[0]].shape[0]
    best = np.zeros(m, dtype=np.int64)
    best_gain = np.zeros(m)
    for b in _column_blocks(m, 8 * rows):
        # [R, memory] outputs are independent: (R, |b|) row errors instead of (R, m) per candidate (134 MB
        # each for ResNet-50's 2048-output consumers); equal to rounding (see _column_blocks)
        sb = Samples(s.X, None, s.S[:, b], s.Z[:, b])
        base = _post_rows(d, _pre(s.X, cols, candidates[names[0]][b]), sb)
        best_b, gain_b = best[b], best_gain[b]  # views: assignments below land in best, best_gain
        for j, name in enumerate(names[1:], start=1):
            delta = base - _post_rows(d, _pre(s.X, cols, candidates[name][b]), sb)
            gain = delta.mean(axis=0)
            se = delta.std(axis=0, ddof=1) / np.sqrt(rows) if rows > 1 else np.full_like(gain, np.inf)
            better = (gain > q * se) & (gain > gain_b)
            best_b[better], gain_b[better] = j, gain[better]
    return best
