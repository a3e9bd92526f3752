"""PRO per-group allocation: error curves from the greedy engine and the budget spent on them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_solvers import _layer, _ls_error

from models import _B, BUILDERS, inputs_for
from onnx_poem import prune
from onnx_poem.allocation import MacsTable, pro_cap, pro_keeps, region_keeps
from onnx_poem.api import run_family
from onnx_poem.solvers.greedy import QuadProblem, greedy_eliminate
from onnx_poem.verify import session


def test_greedy_trace_is_the_refit_error_curve() -> None:
    """``cumsum(trace)[j-1]`` is the least-squares error after the first ``j`` removals, less the full fit's."""
    d = _layer(C=6, k=2, act="identity", seed=3)
    p = QuadProblem(d.G, d.P, d.W0, 2)
    trace: list[float] = []
    greedy_eliminate([p], 6, 1, lam=1e-9, trace=trace)
    assert len(trace) == 5
    base = _ls_error(d, np.arange(6))
    for j, cum in enumerate(np.cumsum(trace), start=1):
        kept = greedy_eliminate([p], 6, 6 - j, lam=1e-9)  # the same path, stopped after j removals
        assert cum == pytest.approx(_ls_error(d, kept) - base, rel=1e-5, abs=1e-6 * base)


def test_trace_scales_weight_each_problem() -> None:
    d = _layer(C=5, k=1, act="identity", seed=4)
    p = QuadProblem(d.G, d.P, d.W0, 1)
    one: list[float] = []
    both: list[float] = []
    greedy_eliminate([p], 5, 2, lam=1e-9, trace=one)
    greedy_eliminate([p, p], 5, 2, lam=1e-9, trace=both, scales=[0.25, 0.5])
    assert np.allclose(both, 0.75 * np.asarray(one))


def _groups(**sizes: int) -> list[Any]:
    return [SimpleNamespace(id=k, channels=v) for k, v in sizes.items()]


def test_pro_spends_the_budget_where_error_per_mac_is_smallest() -> None:
    groups = _groups(a=10, b=10)
    table = MacsTable(((100, "a", None), (100, "b", None)))  # 10 MACs per channel either way
    curves = {
        "a": np.array([0, 0, 0, 0, 1, 2, 3, 4, 5], dtype=float),  # four free removals, then 1 each
        "b": 0.5 * np.arange(1, 10, dtype=float),  # 0.5 each
    }
    keeps = pro_keeps(groups, curves, table, target=0.7)  # 6 channels out of 20 must go
    assert keeps == {"a": 6, "b": 8}
    assert table.predict(groups, keeps) <= 0.7


def test_pro_weighs_error_against_macs_saved() -> None:
    groups = _groups(a=10, b=10)
    table = MacsTable(((100, "a", None), (400, "b", None)))  # a channel of b saves 4x the MACs
    curves = {"a": np.arange(1, 10, dtype=float), "b": 2.0 * np.arange(1, 10, dtype=float)}
    keeps = pro_keeps(groups, curves, table, target=0.9)
    assert keeps == {"a": 10, "b": 8}  # error 2 per 40 MACs beats error 1 per 10: two of b reach 0.84


def test_pro_stops_at_the_curves_end() -> None:
    groups = _groups(a=4)
    keeps = pro_keeps(groups, {"a": np.zeros(2)}, MacsTable(((40, "a", None),)), target=0.1)
    assert keeps == {"a": 2}  # the target is out of reach: at most len(curve) removals


def _redundant_chain(seed: int = 0, width: int = 8, distinct: int = 4, tail: int = 0) -> onnx.ModelProto:
    """conv(3→width) → relu → conv(width→12) → relu → conv(12→4), the first conv's filters past ``distinct``
    copies of filters ``0 … distinct − 1`` (default: 4-7 copies of 0-3); ``tail`` > 0 puts a wider
    relu → conv(12→tail) before the last conv (tail→4), where most of the MACs are."""
    b = _B(seed)
    t = b.conv("x", 3, width)
    w = next(i for i in b.inits if i.name == b.nodes[-1].input[1])
    arr = numpy_helper.to_array(w).copy()
    arr[distinct:] = arr[np.arange(distinct, width) % distinct]
    bias = next(i for i in b.inits if i.name == b.nodes[-1].input[2])
    barr = numpy_helper.to_array(bias).copy()
    barr[distinct:] = barr[np.arange(distinct, width) % distinct]
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    bias.CopyFrom(numpy_helper.from_array(barr, bias.name))
    t, cin = b.node("Relu", [b.conv(b.node("Relu", [t]), width, 12)]), 12
    if tail:
        t, cin = b.node("Relu", [b.conv(t, 12, tail)]), tail
    return b.model([("x", ["N", 3, 8, 8])], [b.conv(t, cin, 4, k=1, pad=0)])


def test_pro_prunes_the_redundant_layer_first_at_equal_macs() -> None:
    model = _redundant_chain()
    x = inputs_for(model, 160)
    test = inputs_for(model, 64, seed=9)
    want = session(model).run(None, {"x": test})[0]
    out = {}
    for allocation in ("uniform", "pro"):
        pruned, rep = prune(model, ratio=0.25, calib=x, method="poem", allocation=allocation)
        onnx.checker.check_model(pruned, full_check=True)
        got = session(pruned).run(None, {"x": test})[0]
        out[allocation] = (rep, float(np.linalg.norm(got - want) / np.linalg.norm(want)))
    uni, pro = out["uniform"][0], out["pro"][0]
    assert pro.allocation == "pro" and uni.allocation == "uniform"
    first = {g["channels"]: g["kept"] for g in pro.groups}
    assert first[8] == 4  # the four copies go, at no error
    assert pro.macs_ratio <= uni.macs_ratio + 1e-9
    assert out["pro"][1] < out["uniform"][1]


@pytest.mark.parametrize(("ratio", "kept"), [(0.2, 7), (0.5, 2)])
def test_pro_removes_at_most_the_budgets_cap(ratio: float, kept: int) -> None:
    """Eighteen of twenty channels are copies (free to remove), a quarter of the MACs: PRO removes at most
    ``pro_cap(ratio)`` of the group, ``min(0.9, ratio + 0.45)`` — 13 at a light budget (ratio 0.2: cap 0.65),
    18 at a heavy one, and takes the rest of the budget from the other groups."""
    assert pro_cap(0.2) == pytest.approx(0.65) and pro_cap(0.5) == 0.9
    model = _redundant_chain(width=20, distinct=2, tail=64)
    _, rep = prune(model, ratio=ratio, calib=inputs_for(model, 160), method="poem", allocation="pro")
    assert {g["channels"]: g["kept"] for g in rep.groups}[20] == kept


def test_each_budget_of_a_family_has_its_own_cap() -> None:
    """A family's curves are measured for its largest ratio (cap 0.9); the lighter budget still stops at its own."""
    model = _redundant_chain(width=20, distinct=2, tail=64)
    family = run_family(model, [0.2, 0.5], calib=inputs_for(model, 160), method="poem", allocation="pro")
    assert [{g["channels"]: g["kept"] for g in r.report.groups}[20] for r in family] == [7, 2]


def test_pro_is_deterministic() -> None:
    model = _redundant_chain(1)
    x = inputs_for(model, 96)
    a, _ = prune(model, ratio=0.4, calib=x, allocation="pro", seed=2)
    b, _ = prune(model, ratio=0.4, calib=x, allocation="pro", seed=2)
    assert a.SerializeToString() == b.SerializeToString()


def test_round_to_rounds_every_count_up_to_a_multiple() -> None:
    plain = SimpleNamespace(id="p", channels=20, regions=None)
    staged = SimpleNamespace(id="s", channels=24, regions=(0,) * 16 + (1,) * 8)
    assert region_keeps(plain, 0.5, 8).tolist() == [16]  # 10 → 16
    assert region_keeps(plain, 0.5).tolist() == [10]
    assert region_keeps(staged, 0.5, 8).tolist() == [8, 8]  # 8 stays, 4 → 8
    assert region_keeps(SimpleNamespace(id="t", channels=6, regions=None), 0.5, 8).tolist() == [6]


@pytest.mark.parametrize("allocation", ["uniform", "pro"])
def test_round_to_in_the_pipeline(allocation: str) -> None:
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 96)
    pruned, rep = prune(model, ratio=0.6, calib=x, round_to=4, allocation=allocation)
    onnx.checker.check_model(pruned, full_check=True)
    kept = [g["kept"] for g in rep.groups]
    assert all(k % 4 == 0 or k == g["channels"] for k, g in zip(kept, rep.groups, strict=True))
    assert any(k < g["channels"] for k, g in zip(kept, rep.groups, strict=True))


def test_macs_target_search_accounts_for_rounding() -> None:
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 96)
    _, rep = prune(model, target_macs=0.5, calib=x, round_to=4)
    assert all(g["kept"] % 4 == 0 for g in rep.groups)
    assert rep.macs_ratio <= 0.5 + 0.05


def test_pro_moves_in_multiples_of_round_to() -> None:
    groups = _groups(a=20, b=24)
    table = MacsTable(((200, "a", None), (240, "b", None)))
    curves = {"a": np.linspace(0.1, 1.8, 18), "b": np.linspace(0.1, 2.1, 21)}
    keeps = pro_keeps(groups, curves, table, target=0.6, step=8)
    assert all(k % 8 == 0 for k in keeps.values())
    assert table.predict(groups, keeps) <= 0.6
    assert keeps == pro_keeps(groups, curves, table, target=0.6, step=8)


def test_pro_meets_a_macs_target_on_an_option_a_stream() -> None:
    """An option-A stream (`--residual stream` on a CIFAR ResNet) is one group of 64 atoms in three regions, and
    its first stage's layers see only 16 of them: PRO's MACs count follows its regions' own counts (they round
    per region), so the written model meets the target and the dry run's predicted MACs are the written ones.
    With one fraction for the whole group PRO ended at 0.716 of the MACs for a 0.70 target on ResNet-20."""
    from pathlib import Path

    from onnx_poem.api import run

    demo = Path(__file__).resolve().parents[1] / "models"
    data = dict(np.load(demo / "cifar10_calib256.npz"))
    x = {k: v[:128] for k, v in data.items()}
    model = onnx.load(demo / "cifar10_resnet20.onnx")
    opts: dict[str, Any] = {"target_macs": 0.7, "calib": x, "residual": "stream", "seed": 0}
    planned = run(model, dry_run=True, **opts).report
    pruned, rep = prune(model, **opts)
    onnx.checker.check_model(pruned, full_check=True)
    assert any(g.get("kept", 0) < g["channels"] for g in rep.groups)
    assert rep.macs_ratio <= 0.7 + 1e-9
    assert planned.macs_after == rep.macs_after


def test_macs_of_a_group_with_regions_follow_the_allocation_split() -> None:
    """A group with regions (16 + 16 + 32 atoms, an option-A stream's stages) keeping ``K`` atoms is counted with
    the per-region quotas the allocation stage applies, ``region_keeps(g, 1 − K / 64)``: a layer that reads only
    the first region scales with that region's kept fraction; given the quotas, every layer follows them."""
    g = SimpleNamespace(id="s", channels=64, regions=(0,) * 16 + (1,) * 16 + (2,) * 32)
    table = MacsTable(
        ((1000, "s", None), (2000, None, "s"), (500, "s", None), (700, None, None)),
        (((0,), None), (None, (0, 1)), (None, None), (None, None)),
    )
    for kept in range(1, 65):
        q = region_keeps(g, 1.0 - kept / 64)
        rows = 1000 * q[0] / 16 + 2000 * q[:2].sum() / 32 + 500 * kept / 64 + 700
        assert table.predict([g], {"s": kept}) == pytest.approx(rows / 4200, abs=1e-12)
        for step in (1, 4):
            q = region_keeps(g, 1.0 - kept / 64, step)
            rows = 1000 * q[0] / 16 + 2000 * q[:2].sum() / 32 + 500 * q.sum() / 64 + 700
            assert table.predict([g], {"s": int(q.sum())}, {"s": q}) == pytest.approx(rows / 4200, abs=1e-12)
