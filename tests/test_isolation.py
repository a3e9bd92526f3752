"""One group's failure is that group's reason, not the end of the run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnx_poem.pipeline.solving as solving
import onnx_poem.pro as pro
import onnx_poem.solve as solve_mod
from models import BUILDERS, inputs_for
from onnx_poem import prune


def _target_group(name: str) -> str:
    model = BUILDERS[name]()
    _, rep = prune(model, ratio=0.5, calib=inputs_for(model, 32), positions=8, allocation="uniform")
    assert len(rep.groups) >= 2
    return rep.groups[0]["group"]


@pytest.mark.parametrize("where", ["solve", "rewrite"])
def test_a_planted_failure_leaves_that_group_unpruned_and_prunes_the_rest(monkeypatch, where: str) -> None:
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 32)
    bad = _target_group("conv_chain")
    if where == "solve":
        real_solve = solving.solve_group

        def solve(view, current, g, *args):
            if g.id == bad:
                raise FloatingPointError("planted solver failure")
            return real_solve(view, current, g, *args)

        monkeypatch.setattr(solving, "solve_group", solve)
    else:
        real_update = solve_mod.consumer_update

        def update(view, g, c, W, own):
            u = real_update(view, g, c, W, own)
            if g.id == bad:  # a weight of the wrong shape: the checker's shape inference rejects the rewrite
                return type(u)(u.node, u.weight, u.weight_value[:, :-1], u.bias, u.bias_value)
            return u

        monkeypatch.setattr(solve_mod, "consumer_update", update)
    pruned, rep = prune(model, ratio=0.5, calib=x, positions=8, allocation="uniform")
    onnx.checker.check_model(pruned, full_check=True)
    by_id = {g["group"]: g for g in rep.groups}
    assert by_id[bad]["kept"] == by_id[bad]["channels"]
    assert all(g["kept"] < g["channels"] for gid, g in by_id.items() if gid != bad)
    reason = next(u["reason"] for u in rep.unprunable if u["where"] == bad)
    assert reason.startswith("left unpruned: ") and ("planted" in reason or "kernel channels" in reason), reason
    assert all(la.group != bad for la in rep.layers)
    assert rep.macs_ratio < 1


def test_a_rewrite_that_only_onnxruntime_rejects_is_dropped_at_the_end(monkeypatch) -> None:
    """A decision that passes the checker but breaks an onnxruntime run is found and dropped before verification."""
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 32)
    bad = _target_group("conv_chain")
    real_apply = solving.apply_plan

    def apply(view, groups, plan):
        m = real_apply(view, groups, plan)
        if any(d.group_id == bad for d in plan.decisions):
            for n in m.graph.node:
                if n.op_type == "Conv":  # valid for the checker, not for ORT
                    kept = [a for a in n.attribute if a.name != "group"]
                    del n.attribute[:]
                    n.attribute.extend([*kept, onnx.helper.make_attribute("group", 3)])
                    break
        return m

    monkeypatch.setattr(solving, "apply_plan", apply)
    # let the bad rewrite through the per-group check
    monkeypatch.setattr(solving, "check_structure", lambda *a, **k: None)
    _, rep = prune(model, ratio=0.5, calib=x, positions=8, allocation="uniform", mode="parallel")
    by_id = {g["group"]: g for g in rep.groups}
    assert by_id[bad]["kept"] == by_id[bad]["channels"]
    assert any(u["where"] == bad and u["reason"].startswith("left unpruned") for u in rep.unprunable)
    assert np.isfinite(next(iter(rep.agreement.values()))["rel_error"])


def test_a_failing_error_curve_keeps_its_group_whole_under_pro(monkeypatch) -> None:
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 32)
    bad = _target_group("conv_chain")
    real_curve = pro._error_curve

    def curve(view, g, *args):
        if g.id == bad:
            raise MemoryError("planted curve failure")
        return real_curve(view, g, *args)

    monkeypatch.setattr(pro, "_error_curve", curve)
    _, rep = prune(model, ratio=0.5, calib=x, positions=8)
    by_id = {g["group"]: g for g in rep.groups}
    assert by_id[bad]["kept"] == by_id[bad]["channels"]
    assert any(g["kept"] < g["channels"] for g in rep.groups)
    assert any(u["where"] == bad and "planted curve failure" in u["reason"] for u in rep.unprunable)
