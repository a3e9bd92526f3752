"""Solver properties on synthetic data (no ONNX)."""

from __future__ import annotations

import dataclasses
import importlib
import itertools

import numpy as np
import pytest

from onnx_poem.solvers import LayerData, Samples, kept_columns, reconstruct, select_channels
from onnx_poem.solvers.activations import KINDS, apply, derivative, piecewise
from onnx_poem.solvers.greedy import QuadProblem, greedy_eliminate
from onnx_poem.solvers.reconstruct import _u_step, _u_step_pieces, post_errors

# the module itself (the package exports its function of the same name)
rec = importlib.import_module("onnx_poem.solvers.reconstruct")


def _layer(
    C: int = 8,
    k: int = 2,
    m: int = 5,
    N: int = 4000,
    *,
    act: str = "relu",
    seed: int = 0,
    planted: np.ndarray | None = None,
) -> LayerData:
    rng = np.random.default_rng(seed)
    n = C * k
    X = rng.standard_normal((N, n))
    W = rng.standard_normal((m, n))
    if planted is not None:  # only these channels matter
        mask = np.zeros(C, bool)
        mask[planted] = True
        W[:, ~np.repeat(mask, k)] *= 1e-3
    b = rng.standard_normal(m) * 0.1
    Y = X @ W.T + b
    Xb = np.hstack([X, np.ones((N, 1))])
    Z = apply(act, (0.0, 6.0) if act == "clip" else (0.1,) if act == "leaky_relu" else (), Y)
    half = N // 2  # fitting / held-out halves
    params = (0.0, 6.0) if act == "clip" else (0.1,) if act == "leaky_relu" else ()
    d = np.mean(derivative(act, params, Y) ** 2, axis=1)
    fit = Samples(X[:half], Y[:half], np.zeros((half, m)), Z[:half])
    held = Samples(X[half:], Y[half:], np.zeros((N - half, m)), Z[half:])
    return LayerData(
        G=Xb.T @ Xb,
        P=Y.T @ Xb,
        Gw=(Xb * d[:, None]).T @ Xb,
        Pw=(Y * d[:, None]).T @ Xb,
        W0=np.hstack([W, b[:, None]]),
        k=k,
        count=N,
        activation=act,
        act_params=params,
        fit=fit,
        held=held,
    )


def test_keep_all_reproduces_weights() -> None:
    d = _layer()
    keep = np.arange(8)
    for method in ("ls", "poem", "none", "scale"):
        W = reconstruct(d, keep, method=method, lam=1e-9).W
        np.testing.assert_allclose(W, d.W0, rtol=1e-5, atol=1e-6)
    assert select_channels("reap", [d], 8, 8, filters=np.ones((8, 1)), seed=0).tolist() == list(range(8))


def _ls_error(d: LayerData, keep: np.ndarray) -> float:
    """Squared pre-activation error of the least-squares weights on all samples."""
    cols = kept_columns(keep, d.k, d.G.shape[0])
    W = reconstruct(d, keep, method="ls", lam=1e-9).W
    R = d.P[:, cols] - W @ d.G[np.ix_(cols, cols)]
    assert np.abs(R).max() < 1e-6 * np.abs(d.P).max()  # W is the LS optimum on its support
    X = np.vstack([d.fit.X, d.held.X])
    Xs = np.hstack([X[:, cols[:-1]], np.ones((d.count, 1))])
    return float(np.sum((Xs @ W.T - np.vstack([d.fit.Y, d.held.Y])) ** 2))


def test_error_never_decreases_as_fewer_channels_are_kept() -> None:
    d = _layer(C=10, k=1, seed=3)
    errs = []
    for keep in range(10, 0, -1):
        kept = select_channels("reap", [d], 10, keep, filters=np.ones((10, 1)), seed=0, lam=1e-9)
        errs.append(_ls_error(d, kept))
    assert all(b >= a - 1e-6 * max(1.0, a) for a, b in itertools.pairwise(errs))


@pytest.mark.parametrize("method", ["reap", "poem", "thinet"])
@pytest.mark.parametrize("k", [1, 3])
def test_planted_support_is_recovered(method: str, k: int) -> None:
    planted = np.array([1, 4, 6])
    d = _layer(C=9, k=k, planted=planted, seed=5)
    kept = select_channels(method, [d], 9, 3, filters=np.ones((9, 1)), seed=0)
    assert kept.tolist() == planted.tolist()


def test_greedy_matches_exhaustive_best_first_step() -> None:
    d = _layer(C=6, k=2, act="identity", seed=7)
    kept = greedy_eliminate([QuadProblem(d.G, d.P, d.W0, 2)], 6, 5, lam=1e-9)
    errs = [_ls_error(d, np.array([c for c in range(6) if c != drop])) for drop in range(6)]
    assert sorted(set(range(6)) - set(kept.tolist())) == [int(np.argmin(errs))]


def test_inputs_are_not_mutated() -> None:
    d = _layer()
    copies = {k: v.copy() for k, v in (("G", d.G), ("P", d.P), ("W0", d.W0), ("X", d.fit.X))}
    for G in (d.G, d.P, d.W0, d.fit.X):
        G.setflags(write=False)
    kept = select_channels("poem", [d], 8, 4, filters=np.ones((8, 1)), seed=0)
    reconstruct(d, kept, method="poem")
    for k, v in copies.items():
        np.testing.assert_array_equal(v, {"G": d.G, "P": d.P, "W0": d.W0, "X": d.fit.X}[k])


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "clip", "sigmoid", "tanh", "gelu", "hard_swish", "softplus"])
def test_poem_is_never_worse_than_ls_on_held_out(act: str) -> None:
    d = _layer(C=8, k=2, act=act, seed=11, N=3000)
    kept = select_channels("poem", [d], 8, 4, filters=np.ones((8, 1)), seed=0)
    cols = kept_columns(kept, 2, d.G.shape[0])
    W_ls = reconstruct(d, kept, method="ls").W
    rec = reconstruct(d, kept, method="poem")
    e_ls = post_errors(d, W_ls, cols, d.held)
    e_p = post_errors(d, rec.W, cols, d.held)
    assert np.all(e_p <= e_ls + 1e-9)  # chosen per output on these rows
    assert e_p.sum() < e_ls.sum()  # and strictly better overall on a ReLU-like layer


def test_u_step_is_the_exact_minimiser() -> None:
    rng = np.random.default_rng(0)
    r, z = rng.standard_normal(200) * 3, np.abs(rng.standard_normal(200))
    for kind, params in (("relu", ()), ("leaky_relu", (0.2,)), ("clip", (0.0, 1.5)), ("hard_sigmoid", (0.2, 0.5))):
        u = _u_step(r, z, 2.0, piecewise(kind, params))
        grid = np.linspace(-15, 15, 30001)[:, None]
        cost = (apply(kind, params, grid) - z) ** 2 + 2.0 * (grid - r) ** 2
        best = cost.min(axis=0)
        got = (apply(kind, params, u) - z) ** 2 + 2.0 * (u - r) ** 2
        assert np.all(got <= best + 1e-3)


@pytest.mark.parametrize("shape", [(700, 300), (3, 5000), (257,)])
def test_relu_u_step_equals_the_generic_one_bit_for_bit(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    r = rng.standard_normal(shape).astype(np.float32)
    z = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    r.reshape(-1)[::7], z.reshape(-1)[::5], r.reshape(-1)[::11] = 0.0, 0.0, -0.0
    for lam in (0.3, 1.0, 10.0, 100.0):
        fast = _u_step(r, z, lam, piecewise("relu", ()))
        generic = _u_step_pieces(r, z, lam, piecewise("relu", ()))
        assert np.array_equal(fast.view(np.int32), generic.view(np.int32))


def test_row_blocked_products_equal_the_whole_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The held-out pre-activations and the reservoir's ``X̄ᵀX̄`` are computed in row blocks (memory): with
    blocks of a few rows they equal the products over all rows (to rounding: BLAS may take another kernel for a block's rows)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((1000, 40)).astype(np.float32)
    cols = np.array([0, 3, 4, 9, 17, 39, 40])  # the last column is the bias
    W = rng.standard_normal((6, len(cols)))
    Xb = np.hstack([X[:, cols[:-1]].astype(np.float64), np.ones((len(X), 1))])
    monkeypatch.setattr(rec, "BLOCK_BYTES", 8 * len(cols) * 37)  # 37 rows per block, a ragged last block
    np.testing.assert_allclose(rec._pre(X, cols, W), Xb @ W.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rec._gram(X, cols), Xb.T @ Xb, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("whole", [True, False])
def test_poem_fit_in_the_reservoirs_own_rows_gives_the_same_weights(whole: bool) -> None:
    """With ``consume`` the relaxation's rows are compacted inside the reservoir (memory); the weights are
    bit for bit those from a copy, on both paths (the reservoir holds every fitting row, or a sample)."""
    d = _layer(C=12, k=3, m=7, N=3000, seed=4)
    f = d.fit
    rows = Samples(f.X.astype(np.float32), f.Y.astype(np.float32), f.S.astype(np.float32), f.Z.astype(np.float32))
    d = dataclasses.replace(d, fit=rows, count=len(rows) if whole else d.count)
    cols = kept_columns(np.array([0, 2, 3, 5, 8, 9, 11]), d.k, d.G.shape[0])
    W_ls = rec.least_squares(d, cols, 0.01)
    X = rows.X.copy()
    copied = rec.poem_fit(d, cols, W_ls, mu=0.3)
    assert np.array_equal(rows.X, X)  # without consume the rows are only read
    in_place = rec.poem_fit(d, cols, W_ls, mu=0.3, consume=True)
    assert not np.array_equal(rows.X, X)  # the rows were compacted in place (the memory path ran)
    assert copied is not None and in_place is not None
    assert np.array_equal(copied, in_place)


def test_relaxation_runs_at_most_its_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relaxation's cost is bounded by ``RELAX_SCHEDULE``: with no early stop it runs exactly that many U-steps
    per λ, in order (ResNet-50's relaxations never stopped early: the bound is the cost, benchmarks/scale.md)."""
    d = _layer(C=12, k=3, m=7, N=3000, seed=4)
    cols = kept_columns(np.array([0, 2, 3, 5, 8, 9, 11]), d.k, d.G.shape[0])
    W_ls = rec.least_squares(d, cols, 0.01)
    lams: list[float] = []
    real = rec._u_step

    def counted(r: np.ndarray, z: np.ndarray, lam: float, pieces: object) -> np.ndarray:
        lams.append(lam)
        return real(r, z, lam, pieces)

    monkeypatch.setattr(rec, "_u_step", counted)
    monkeypatch.setattr(rec, "RELAX_TOL", 0.0)
    assert rec.poem_fit(d, cols, W_ls, mu=0.3) is not None
    assert lams == [lam for lam, iters in rec.RELAX_SCHEDULE for _ in range(iters)]
    assert len(lams) <= 8


@pytest.mark.parametrize("kind", KINDS)
def test_derivatives_match_finite_differences(kind: str) -> None:
    params = {"leaky_relu": (0.1,), "clip": (0.0, 6.0), "hard_sigmoid": (0.2, 0.5), "elu": (1.0,)}.get(kind, ())
    y = np.linspace(-7.3, 7.1, 997) + 1.234e-3  # avoids the kinks
    h = 1e-6
    fd = (apply(kind, params, y + h) - apply(kind, params, y - h)) / (2 * h)
    np.testing.assert_allclose(derivative(kind, params, y), fd, atol=1e-4)


def test_selection_baselines() -> None:
    f = np.array([[3.0, 0], [0.1, 0], [-5, 1], [0.5, 0.5]])
    assert select_channels("l1", [], 4, 2, filters=f, seed=0).tolist() == [0, 2]
    assert select_channels("l2", [], 4, 2, filters=f, seed=0).tolist() == [0, 2]
    a = select_channels("random", [], 4, 2, filters=f, seed=3)
    assert a.tolist() == select_channels("random", [], 4, 2, filters=f, seed=3).tolist() and len(a) == 2


@pytest.mark.parametrize("method", ["reap", "poem", "l1", "random"])
def test_region_quotas_are_respected(method: str) -> None:
    d = _layer(C=9, k=1, seed=2)
    regions = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    quota = np.array([1, 3, 2])
    kept = select_channels(method, [d], 9, 6, filters=np.arange(9.0)[:, None] + 1, seed=0, regions=regions,
                           region_keep=quota)  # fmt: skip
    assert np.bincount(regions[kept], minlength=3).tolist() == quota.tolist()


def test_absent_atoms_cost_nothing_for_a_consumer() -> None:
    d = _layer(C=4, k=2, seed=4, act="identity")
    # 6 atoms; this consumer sees only atoms 1..4 as its channels 0..3
    index = np.array([-1, 0, 1, 2, 3, -1])
    p = QuadProblem(d.G, d.P, d.W0, 2, index)
    kept = greedy_eliminate([p], 6, 4, lam=1e-9)
    assert len(kept) == 4
    assert 0 not in kept.tolist() and 5 not in kept.tolist()  # free to remove: removed first


def test_apoz_removes_the_most_often_zero_channels() -> None:
    d = _layer(C=5, k=2, seed=8)
    X = d.fit.X.copy()
    X[:, 2:4] = np.where(np.arange(len(X))[:, None] % 10 < 9, 0.0, X[:, 2:4])  # channel 1: 90 % zeros
    X[:, 6:8] = np.where(np.arange(len(X))[:, None] % 10 < 5, 0.0, X[:, 6:8])  # channel 3: 50 % zeros
    d2 = LayerData(**{**d.__dict__, "fit": Samples(X, d.fit.Y, d.fit.S, d.fit.Z)})
    assert select_channels("apoz", [d2], 5, 3, filters=np.ones((5, 1)), seed=0).tolist() == [0, 2, 4]


def test_thinet_scales_fit_the_kept_contributions() -> None:
    d = _layer(C=6, k=2, seed=9, act="identity")
    keep = np.array([0, 2, 3, 5])
    W = reconstruct(d, keep, method="scale", lam=1e-9).W
    cols = kept_columns(keep, 2, d.G.shape[0])
    ratio = W / d.W0[:, cols]
    # one scale per channel block (shared by every output), and no worse than no reconstruction
    assert np.allclose(ratio[:, 0], ratio[:, 1]) and np.allclose(ratio[:, 0], ratio[0, 0])
    e = lambda M: np.trace(M @ d.G[np.ix_(cols, cols)] @ M.T) - 2 * np.trace(M @ d.P[:, cols].T)  # noqa: E731
    assert e(W) <= e(d.W0[:, cols]) + 1e-6


def test_choice_keeps_least_squares_unless_a_fit_is_clearly_better() -> None:
    """Few selection rows: nothing is significant, least squares stays; many rows: the clearly better fit wins."""
    from onnx_poem.solvers.reconstruct import LayerData, Samples, choose_per_output, kept_columns

    rng = np.random.default_rng(0)
    n, m = 6, 3
    W_true = rng.standard_normal((m, n + 1))
    cols = kept_columns(np.arange(n), 1, n + 1)

    def layer(rows: int) -> LayerData:
        X = rng.standard_normal((rows, n))
        Y = np.c_[X, np.ones(rows)] @ W_true.T
        s = Samples(X=X, Y=Y, S=np.zeros_like(Y), Z=np.maximum(Y, 0))
        G = np.eye(n + 1)
        return LayerData(G, W_true, G, W_true, W_true, 1, rows, "relu", (), s, s)

    bad = W_true + 0.5 * rng.standard_normal(W_true.shape)  # "least squares" that is off
    for rows, expect in ((2, 0), (500, 1)):
        pick = choose_per_output(layer(rows), {"ls": bad, "fit": W_true}, cols)
        assert (pick == expect).all(), (rows, pick)


def test_cholesky_failures_fall_back_and_say_so(caplog) -> None:
    """An indefinite matrix: both solves fall back, log it, record it, and still solve the system."""
    from onnx_poem.solvers.linalg import ridge_solve, spd_inverse

    A = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1: Cholesky fails
    notes: list[str] = []
    inv = spd_inverse(A, notes)
    np.testing.assert_allclose(inv @ A, np.eye(2), atol=1e-12)
    B = np.array([[1.0, 0.0]])
    W = ridge_solve(A, B, np.zeros_like(B), 0.0, notes)
    np.testing.assert_allclose(W @ A, B, atol=1e-12)
    assert notes == ["Cholesky failed; used the pseudo-inverse", "Cholesky failed; used least squares (lstsq)"]
    assert "falling back" in caplog.text


def _damped_loss(G: np.ndarray, P: np.ndarray, W0: np.ndarray, k: int, lam: float):
    """``alive → ‖Y − W X‖²`` up to a constant, ``−tr(P_S G_SS⁻¹ P_Sᵀ)`` of the damped refit, by a direct solve."""
    from onnx_poem.solvers.linalg import damping

    delta = damping(G, lam)
    Gd, Pd = G + delta * np.eye(len(G)), P + delta * W0

    def loss(alive: list[int]) -> float:
        cols = np.concatenate([np.arange(c * k, c * k + k) for c in alive] + [np.array([len(G) - 1])])
        W = np.linalg.solve(Gd[np.ix_(cols, cols)], Pd[:, cols].T).T
        return float(-np.sum(W * Pd[:, cols]))

    return loss


def _eager_greedy(G: np.ndarray, P: np.ndarray, W0: np.ndarray, k: int, channels: int, keep: int, lam: float):
    """Reference: at every step, the removal whose damped least-squares refit loses the least, by direct solves."""
    loss = _damped_loss(G, P, W0, k, lam)
    alive, costs = list(range(channels)), []
    while len(alive) > keep:
        trial = [loss([a for a in alive if a != c]) for c in alive]
        j = int(np.argmin(trial))
        costs.append(trial[j] - loss(alive))
        alive.pop(j)
    return np.array(alive), np.array(costs)


def _greedy_problem(
    rng: np.random.Generator, C: int, k: int, m: int, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``G``, ``P``, ``W0`` of a noisy linear layer over ``C`` channels of ``k`` columns with uneven scales."""
    X = rng.standard_normal((rows, C * k)) * rng.gamma(1.0, 1.0, C * k) + 0.3 * rng.standard_normal((rows, 1))
    Xb = np.hstack([X, np.ones((rows, 1))])
    W0 = rng.standard_normal((m, C * k + 1))
    Y = Xb @ W0.T + 0.5 * rng.standard_normal((rows, m))
    return Xb.T @ Xb, Y.T @ Xb, W0


@pytest.mark.parametrize("k", [1, 3])
def test_lazy_greedy_matches_eager_solves_across_flushes(k: int) -> None:
    """The lazy downdates (flushed every FLUSH ranks) pick what direct refits pick, with the same costs."""
    C = 90  # 60 removals: at least one flush of the pending rank (FLUSH = 64)
    G, P, W0 = _greedy_problem(np.random.default_rng(3), C, k, m=12, rows=2000)
    trace: list[float] = []
    kept = greedy_eliminate([QuadProblem(G, P, W0, k)], C, 30, lam=0.01, trace=trace)
    ref_kept, ref_costs = _eager_greedy(G, P, W0, k, C, 30, 0.01)
    np.testing.assert_array_equal(kept, np.sort(ref_kept))
    np.testing.assert_allclose(trace, ref_costs, rtol=1e-6, atol=1e-6 * abs(ref_costs).max())


@pytest.mark.parametrize(("k", "divisor"), [(1, 64), (2, 64), (1, 2)])
def test_block_steps_cost_what_a_direct_refit_loses(k: int, divisor: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide group loses ``block_size(alive)`` atoms per step by one joint downdate: at the end of every step the
    trace's cumulative cost is the damped refit's loss on what is left (direct solves), across flushes (divisor 2:
    steps wider than the pending factors' room)."""
    from onnx_poem.solvers import greedy
    from onnx_poem.solvers.greedy import block_size

    monkeypatch.setattr(greedy, "BLOCK_DIVISOR", divisor)
    C, keep = 300, 90  # steps of 4, 3, 2, then 1 atom; flushes between them
    G, P, W0 = _greedy_problem(np.random.default_rng(5), C, k, m=10, rows=3000)
    trace: list[float] = []
    removed: list[int] = []
    kept = greedy_eliminate([QuadProblem(G, P, W0, k)], C, keep, lam=0.01, trace=trace, removed=removed)
    assert len(kept) == keep and sorted(removed + kept.tolist()) == list(range(C))
    ends, alive = [], C
    while alive > keep:
        alive -= min(block_size(alive), alive - keep)
        ends.append(C - alive)
    assert ends[0] == C // divisor and len(ends) < C - keep  # several atoms per step
    loss = _damped_loss(G, P, W0, k, 0.01)
    base, cum = loss(list(range(C))), np.cumsum(trace)
    for j in ends:
        left = sorted(set(range(C)) - set(removed[:j]))
        assert cum[j - 1] == pytest.approx(loss(left) - base, rel=1e-6)


def test_block_steps_respect_region_quotas() -> None:
    rng = np.random.default_rng(6)
    C, m, rows = 260, 8, 1500
    X = rng.standard_normal((rows, C)) * rng.gamma(1.0, 1.0, C)
    Xb = np.hstack([X, np.ones((rows, 1))])
    W0 = rng.standard_normal((m, C + 1))
    G, P = Xb.T @ Xb, (Xb @ W0.T).T @ Xb
    regions = np.repeat([0, 1, 2], [100, 130, 30])
    quota = np.array([40, 120, 10])  # region 1 loses 10 atoms only, region 2 most of its 30
    kept = greedy_eliminate([QuadProblem(G, P, W0, 1)], C, int(quota.sum()), lam=0.01, regions=regions,
                            region_keep=quota)  # fmt: skip
    assert np.bincount(regions[kept], minlength=3).tolist() == quota.tolist()


def test_in_place_solve_falls_back_on_the_restored_matrix() -> None:
    """A failed in-place Cholesky restores the matrix before least squares (the caller's temporary)."""
    from onnx_poem.solvers.linalg import spd_solve

    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 40))
    A = A + A.T - 15 * np.eye(40)  # symmetric, indefinite: Cholesky fails part-way
    B = rng.standard_normal((5, 40))
    work = A.copy()
    got = spd_solve(work, B, overwrite=True)
    np.testing.assert_array_equal(work, A)
    np.testing.assert_allclose(got, np.linalg.lstsq(A, B.T, rcond=None)[0].T, rtol=1e-10, atol=1e-12)


def test_choice_in_column_blocks_equals_the_whole_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """choose_per_output over blocks of outputs picks what one pass over all outputs picks (memory, not math)."""
    rng = np.random.default_rng(3)
    n, m, rows = 40, 300, 400
    W_true = rng.standard_normal((m, n + 1)) * 0.3
    X = rng.standard_normal((rows, n)).astype(np.float32)
    cols = rec.kept_columns(np.arange(n), 1, n + 1)
    Y = np.c_[X, np.ones(rows)] @ W_true.T
    S = (0.5 * rng.standard_normal((rows, m))).astype(np.float32)
    held = rec.Samples(X=X, Y=Y, S=S, Z=np.maximum(Y + S, 0).astype(np.float32))
    G = np.eye(n + 1)
    d = rec.LayerData(G, W_true, G, W_true, W_true, 1, rows, "relu", (), held, held)
    # each candidate is the truth on a random third of the outputs and off elsewhere
    candidates = {"ls": W_true + 0.3 * rng.standard_normal(W_true.shape)}
    for j in range(3):
        off = W_true + 0.3 * rng.standard_normal(W_true.shape)
        near = rng.random(m) < 1 / 3
        candidates[f"c{j}"] = np.where(near[:, None], W_true + 0.01 * rng.standard_normal(W_true.shape), off)
    whole = rec.choose_per_output(d, candidates, cols)
    monkeypatch.setattr(rec, "BLOCK_BYTES", 8 * rows * 64)  # 64-output blocks, the last one 108 wide
    assert [b.stop - b.start for b in rec._column_blocks(m, 8 * rows)] == [64, 64, 64, 108]
    blocked = rec.choose_per_output(d, candidates, cols)
    np.testing.assert_array_equal(blocked, whole)
    assert len(set(whole.tolist())) == 4  # every candidate won somewhere: the blocks' picks land in place


@pytest.mark.parametrize(
    ("columns", "step"), [(1, 64), (63, 64), (64, 64), (65, 64), (127, 64), (128, 64), (1000, 192)]
)
def test_column_blocks_cover_every_column_once(columns: int, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rec, "BLOCK_BYTES", step * 8)
    blocks = rec._column_blocks(columns, 8)
    assert np.array_equal(np.concatenate([np.arange(columns)[b] for b in blocks]), np.arange(columns))
    assert all(b.start % rec.COLUMN_TILE == 0 for b in blocks)
    assert all(b.stop - b.start >= min(columns, rec.COLUMN_TILE) for b in blocks)
