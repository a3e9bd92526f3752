"""Streaming statistics equal their batch definitions; reservoirs are bounded and seeded."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models import BUILDERS, inputs_for
from onnx_poem.calibration.collect import collect, layer_data
from onnx_poem.calibration.sources import load_calibration
from onnx_poem.calibration.stats import LayerStats, Reservoir
from onnx_poem.cascade import Current, Stream, cut_position
from onnx_poem.config import PruneConfig
from onnx_poem.coupling import find_groups
from onnx_poem.graph import GraphView
from onnx_poem.weights import effective


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 60),
    d=st.integers(1, 6),
    m=st.integers(1, 4),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    seed=st.integers(0, 100),
)
def test_streaming_gram_equals_batch_gram(n: int, d: int, m: int, cuts: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n, m))
    w = rng.random(n)
    st_ = LayerStats.empty(d + 1, m, capacity=8, held_capacity=4, seed=0)
    bounds = sorted({0, n, *[c for c in cuts if c <= n]})
    for a, b in itertools.pairwise(bounds):
        st_.add_fit(x[a:b], y[a:b], w[a:b], {"z": y[a:b]})
    st_.finish(weighted=True)
    xb = np.hstack([x, np.ones((n, 1))])
    # float32 products per batch (add_fit): relative error ~1e-7 per entry, the sums float64
    np.testing.assert_allclose(st_.G, xb.T @ xb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st_.P, y.T @ xb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st_.Gw, (xb * w[:, None]).T @ xb, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st_.Pw, (y * w[:, None]).T @ xb, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(st_.G, st_.G.T)
    assert st_.count == n
    assert len(st_.fit) == min(n, 8)


def test_reservoir_is_bounded_uniform_and_seeded() -> None:
    def fill(seed: int) -> np.ndarray:
        r = Reservoir(50, np.random.default_rng(seed))
        for s in range(0, 5000, 37):
            idx = np.arange(s, min(s + 37, 5000), dtype=np.float64)
            r.add(i=idx[:, None])
        assert len(r) == 50 and r.seen == 5000
        return r.get("i")[:, 0]

    a, b = fill(3), fill(3)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 50
    # uniform over the stream: the mean index is near the middle (std of the mean ≈ 204)
    means = [fill(s).mean() for s in range(20)]
    assert abs(np.mean(means) - 2500) < 300


def test_memory_does_not_grow_with_samples() -> None:
    st_ = LayerStats.empty(5, 2, capacity=16, held_capacity=8, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        st_.add_fit(rng.standard_normal((100, 4)), rng.standard_normal((100, 2)), None, {})
    assert st_.fit.get("x").shape == (16, 4) and st_.G.shape == (5, 5)


def test_float32_batches_give_the_float64_least_squares() -> None:
    """The float32 per-batch products change damped least-squares weights by far less than pruning does."""
    from onnx_poem.solvers.linalg import damping, ridge_solve

    rng = np.random.default_rng(0)
    n, m, rows = 200, 30, 6000
    # correlated, post-ReLU-like activations with a few large channels, as real layers have
    x = np.maximum(rng.standard_normal((rows, 40)) @ rng.standard_normal((40, n)), 0.0) * rng.gamma(0.5, 2.0, n)
    x = x.astype(np.float32)
    y = (x @ rng.standard_normal((n, m)) + rng.standard_normal((rows, m))).astype(np.float32)
    st_ = LayerStats.empty(n + 1, m, capacity=8, held_capacity=4, seed=0)
    for a in range(0, rows, 2048):
        st_.add_fit(x[a : a + 2048], y[a : a + 2048], None, {})
    st_.finish(weighted=False)
    xb = np.hstack([x.astype(np.float64), np.ones((rows, 1))])
    G, P = xb.T @ xb, y.astype(np.float64).T @ xb
    W0 = np.zeros((m, n + 1))
    exact = ridge_solve(G, P, W0, damping(G, 0.01))
    got = ridge_solve(st_.G, st_.P, W0, damping(st_.G, 0.01))
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 1e-5


@given(n=st.integers(2, 80), cut=st.integers(1, 79), seed=st.integers(0, 50))
def test_merged_shards_equal_one_pass(n: int, cut: int, seed: int) -> None:
    """Map over shards + merge by addition gives the single pass's sums; the reservoir stays bounded."""
    cut = min(cut, n - 1)
    rng = np.random.default_rng(seed)
    x, y, w = rng.standard_normal((n, 3)), rng.standard_normal((n, 2)), rng.random(n)
    whole = LayerStats.empty(4, 2, capacity=8, held_capacity=4, seed=0)
    whole.add_fit(x, y, w, {"z": y})
    a = LayerStats.empty(4, 2, capacity=8, held_capacity=4, seed=1)
    b = LayerStats.empty(4, 2, capacity=8, held_capacity=4, seed=2)
    a.add_fit(x[:cut], y[:cut], w[:cut], {"z": y[:cut]})
    b.add_fit(x[cut:], y[cut:], w[cut:], {"z": y[cut:]})
    merged = a.merge(b)
    for st_ in (whole, merged):
        st_.finish(weighted=True)
    for name in ("G", "P", "Gw", "Pw"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-5, atol=1e-5)
    assert merged.count == n and merged.fit.seen == n
    assert len(merged.fit) == min(n, 8)
    rows = {tuple(r) for r in np.round(x.astype(np.float32), 5)}
    assert all(tuple(r) in rows for r in np.round(merged.fit.get("x"), 5))


def test_merged_reservoir_is_uniform_over_both_streams() -> None:
    """Two streams of 300 and 100 rows merged into 40 slots: about three quarters from the first."""
    share = []
    for seed in range(200):
        a, b = Reservoir(40, np.random.default_rng(seed)), Reservoir(40, np.random.default_rng(10_000 + seed))
        a.add(i=np.zeros((300, 1)))
        b.add(i=np.ones((100, 1)))
        m = a.merge(b)
        assert len(m) == 40 and m.seen == 400
        share.append(1 - m.get("i").mean())
    assert abs(np.mean(share) - 0.75) < 0.02  # std of the mean ≈ 0.0045


def test_reservoirs_keep_only_what_the_solvers_read(tmp_path: Path) -> None:
    """The fit reservoir stores no targets y, and a consumer without a residual offset stores no (zero) offset:
    layer_data shows it as a read-only zero of the full shape (memory: ResNet-50's would be 134 MB each)."""

    cfg = PruneConfig(ratio=0.5, mode="parallel", positions=8)
    chunks = [np.arange(0, 8), np.arange(8, 16)]
    seen = set()
    for name in ("conv_chain", "residual"):
        model = BUILDERS[name]()
        data = load_calibration(model, inputs_for(model, 16), samples=16, seed=0)
        view = GraphView.build(model, input_shapes=data.sample_shapes())
        streams = (Stream(view, data, chunks, tmp_path, f"o{name}"), Stream(view, data, chunks, tmp_path, f"c{name}"))
        groups = sorted(find_groups(view, residual=False).groups, key=lambda g: cut_position(view, g))
        seen |= _check_reservoirs(view, groups, streams, cfg)
    assert seen == {True, False}  # both kinds of consumer were checked


def _check_reservoirs(view, groups, streams, cfg) -> set[bool]:
    seen = set()
    for i, g in enumerate(groups):
        W0s = [effective(view, c)[0] for c in g.consumers]
        stats = collect(view, Current.original(view), g, W0s, streams, None, 8, cfg, i)  # the second batch is held out
        for c, W0, st_ in zip(g.consumers, W0s, stats, strict=True):
            d = layer_data(c, W0, st_)
            assert "y" not in st_.fit and d.fit.Y is None
            assert "y" in st_.held and d.held.Y is not None and d.held.Y.shape == (len(d.held), W0.shape[0])
            for r, s in ((st_.fit, d.fit), (st_.held, d.held)):
                assert ("s" in r) == bool(c.offset)
                assert s.S.shape == s.Z.shape == (len(s), W0.shape[0])
                if not c.offset:
                    assert s.S.strides == (0, 0) and not s.S.any()
            seen.add(bool(c.offset))
    return seen


def test_sums_only_pass_equals_the_full_pass(tmp_path: Path) -> None:
    """PRO's curves read only the sums: a pass over the fitting batches without reservoirs (collect with
    ``reservoirs=False``) gives the same G, P, Gw, Pw and count, bit for bit, and keeps no rows."""
    cfg = PruneConfig(ratio=0.5, mode="parallel", positions=8)
    fit, every = [np.arange(0, 8)], [np.arange(0, 8), np.arange(8, 16)]
    checked = 0
    for name in ("conv_chain", "residual"):
        checked += _check_sums_only(name, cfg, fit, every, tmp_path)
    assert checked >= 3


def _check_sums_only(name, cfg, fit, every, tmp_path: Path) -> int:
    model = BUILDERS[name]()
    data = load_calibration(model, inputs_for(model, 16), samples=16, seed=0)
    view = GraphView.build(model, input_shapes=data.sample_shapes())
    groups = sorted(find_groups(view, residual=False).groups, key=lambda g: cut_position(view, g))
    checked = 0
    for i, g in enumerate(groups):
        W0s = [effective(view, c)[0] for c in g.consumers]
        full = collect(
            view, Current.original(view), g, W0s, _streams(view, data, every, tmp_path, f"a{name}{i}"), None, 8, cfg, i
        )
        sums = collect(
            view, Current.original(view), g, W0s, _streams(view, data, fit, tmp_path, f"b{name}{i}"), None, 8, cfg, i,
            reservoirs=False,
        )  # fmt: skip
        for a, b in zip(full, sums, strict=True):
            assert len(a.fit) > 0 and len(a.held) > 0  # the full pass kept rows of both kinds
            assert len(b.fit) == len(b.held) == 0 and b.fit.seen == a.fit.seen and b.count == a.count
            for attr in ("G", "P", "Gw", "Pw"):
                assert np.array_equal(getattr(a, attr), getattr(b, attr)), attr
            checked += 1
    return checked


def _streams(view, data, chunks, tmp_path: Path, tag: str) -> tuple[Stream, Stream]:
    return Stream(view, data, chunks, tmp_path, f"o{tag}"), Stream(view, data, chunks, tmp_path, f"c{tag}")


def test_a_consumer_without_an_activation_shares_its_sums(tmp_path: Path) -> None:
    """POEM's weighted sums ``Gw, Pw`` weigh each row by ``mean f'(y)²``; a consumer whose output goes on without
    an activation has weights 1, so they are ``G, P`` themselves (not a second Gram of the same rows); a consumer
    with an activation has sums of its own."""
    cfg = PruneConfig(ratio=0.5, mode="parallel", positions=8)
    model = BUILDERS["conv_chain"]()  # conv → relu → conv → relu → conv (the output: no activation)
    data = load_calibration(model, inputs_for(model, 16), samples=16, seed=0)
    view = GraphView.build(model, input_shapes=data.sample_shapes())
    groups = sorted(find_groups(view, residual=False).groups, key=lambda g: cut_position(view, g))
    kinds = set()
    for i, g in enumerate(groups):
        W0s = [effective(view, c)[0] for c in g.consumers]
        stats = collect(view, Current.original(view), g, W0s, _streams(view, data, [np.arange(16)], tmp_path, f"w{i}"),
                        None, 16, cfg, i)  # fmt: skip
        for c, st_ in zip(g.consumers, stats, strict=True):
            identity = c.activation.kind == "identity"
            kinds.add(identity)
            assert (st_.Gw is st_.G and st_.Pw is st_.P) == identity
            if not identity:
                assert not np.array_equal(st_.Gw, st_.G)  # ReLU's weights zero the inactive rows
    assert kinds == {True, False}
