"""Rewrite exactness: dead channels, keep-all plans, ratio 0, validity after every rewrite."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models import BUILDERS, inputs_for
from onnx_poem import prune
from onnx_poem.coupling import RangeFix, find_groups
from onnx_poem.coupling.groups import positions
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView
from onnx_poem.plan import GroupDecision, PrunePlan
from onnx_poem.report import count_params
from onnx_poem.rewrite import apply_plan
from onnx_poem.solve import consumer_update
from onnx_poem.solvers import kept_columns
from onnx_poem.weights import effective


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {model.graph.input[0].name: x})


def _kill_channels(model: onnx.ModelProto, dead: dict[str, list[int]]) -> onnx.ModelProto:
    """Zero the consumer input columns of atoms ``dead[group_id]`` (so they carry no signal)."""
    view = GraphView.build(model)
    groups = {g.id: g for g in find_groups(view, residual=True).groups}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: i for i, t in enumerate(m.graph.initializer)}
    for gid, chans in dead.items():
        g = groups[gid]
        for c in g.consumers:
            w = view.const(c.weight).copy()
            n_in = c.in_channels * g.block
            k = w.shape[1] // n_in if c.kind == "conv" or c.trans_b else w.shape[0] // n_in
            for ch in positions(c.index, np.array(chans), g.block):
                if c.kind == "conv":
                    w[:, ch] = 0
                elif c.kind == "gemm" and c.trans_b:
                    w[:, ch * k : (ch + 1) * k] = 0
                else:
                    w[ch * k : (ch + 1) * k] = 0
            m.graph.initializer[inits[c.weight]].CopyFrom(numpy_helper.from_array(w, c.weight))
    return m


def _identity_plan(view: GraphView, dead: dict[str, list[int]]) -> tuple[dict, PrunePlan]:
    groups = {g.id: g for g in find_groups(view, residual=True).groups}
    decisions = []
    for gid, chans in dead.items():
        g = groups[gid]
        keep = np.array([c for c in range(g.channels) if c not in chans])
        updates = []
        for c in g.consumers:
            W0, _ = effective(view, c)
            own = positions(c.index, keep)
            cols = kept_columns(own, (W0.shape[1] - 1) // c.in_channels, W0.shape[1])
            updates.append(consumer_update(view, g, c, W0[:, cols], own))
        decisions.append(GroupDecision(gid, g.channels, tuple(int(i) for i in keep), tuple(updates)))
    return groups, PrunePlan(tuple(decisions))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_pruning_dead_channels_is_exact(name: str) -> None:
    base = fold_constants(BUILDERS[name]())  # the rewrite sees the model as prune() folded it
    view0 = GraphView.build(base)
    dead = {g.id: [0, g.channels - 1] for g in find_groups(view0, residual=True).groups}
    model = _kill_channels(base, dead)
    view = GraphView.build(model)
    groups, plan = _identity_plan(view, dead)
    pruned = apply_plan(view, groups, plan)
    onnx.checker.check_model(pruned, full_check=True)
    x = inputs_for(model, 4)
    for a, b in zip(run(model, x), run(pruned, x), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert count_params(pruned) < count_params(model)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_keep_all_plan_is_a_no_op(name: str) -> None:
    model = fold_constants(BUILDERS[name]())
    view = GraphView.build(model)
    groups, plan = _identity_plan(view, {g.id: [] for g in find_groups(view, residual=True).groups})
    pruned = apply_plan(view, groups, plan)
    x = inputs_for(model, 3)
    for a, b in zip(run(model, x), run(pruned, x), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_ratio_zero_reproduces_the_original(name: str) -> None:
    model = BUILDERS[name]()
    x = inputs_for(model, 16)
    pruned, report = prune(model, ratio=0.0, calib=x, prune_residual=True)
    assert report.macs_after == report.macs_before
    for a, b in zip(run(model, x), run(pruned, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_splits_sharing_their_sizes_constant_get_their_own() -> None:
    """TorchScript shares one split-sizes constant between equal Splits (YOLO's C2f blocks); each Split
    keeps its own count of channels (the YOLO export failed with 'Mismatch between the sum of split')."""
    from models import shared_split_sizes

    base = fold_constants(shared_split_sizes())
    split_groups = [g for g in find_groups(GraphView.build(base), residual=True).groups if g.edits_of(RangeFix)]
    assert len(split_groups) == 2
    dead = {split_groups[0].id: [0], split_groups[1].id: [0, 1, 5]}  # [3, 4] and [2, 3] channels kept
    model = _kill_channels(base, dead)
    view = GraphView.build(model)
    groups, plan = _identity_plan(view, dead)
    pruned = apply_plan(view, groups, plan)
    onnx.checker.check_model(pruned, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    sizes = sorted(inits[n.input[1]].tolist() for n in pruned.graph.node if n.op_type == "Split")
    assert sizes == [[2, 3], [3, 4]]
    x = inputs_for(model, 4)
    np.testing.assert_allclose(run(pruned, x)[0], run(model, x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["residual", "ffn", "split_slice", "concat", "squeeze_excite", "keras_flatten"])
def test_rewritten_names_every_initializer_the_rewrite_changes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the cascade's sessions of a partly pruned model take every other initializer from the original's arrays
    from onnx_poem import rewrite
    from onnx_poem.pipeline import solving

    calls = []

    def recording(view, groups, plan):  # type: ignore[no-untyped-def]
        out = rewrite.apply_plan(view, groups, plan)
        calls.append((view, groups, plan, out))
        return out

    monkeypatch.setattr(solving, "apply_plan", recording)
    model = BUILDERS[name]()
    prune(model, ratio=0.5, calib=inputs_for(model, 64), prune_residual=True)
    assert any(c[2].decisions for c in calls)
    for view, groups, plan, out in calls:
        names = rewrite.rewritten(view, groups, plan)
        for t in out.graph.initializer:
            if t.name in names or view.const(t.name) is None:
                continue
            assert np.array_equal(numpy_helper.to_array(t), view.const(t.name)), t.name


def test_nothing_pruned_from_a_file_writes_the_model_as_loaded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a model read from its file is not held beside its folded copy: a run that prunes nothing reads it again
    model = BUILDERS["keras_flatten"]()
    assert fold_constants(model) is not model  # folding changes this one
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = inputs_for(model, 16)
    from_file, _ = prune(path, ratio=0.0, calib=x)
    in_memory, _ = prune(model, ratio=0.0, calib=x)
    assert from_file.SerializeToString() == in_memory.SerializeToString()
    assert [n.op_type for n in from_file.graph.node] == [n.op_type for n in model.graph.node]
