"""The op kinds (``onnx_poem/coupling/ops``): the registry, each kind's rewrite edit on its own, and a new op
supported by one registration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import BUILDERS, channel_shuffle, grouped_conv, inputs_for, split_slice
from onnx_poem import prune
from onnx_poem.coupling import ChannelGroup, Grouped, PadFix, RangeFix, ReshapeFix, ShuffleFix, find_groups, flow, ops
from onnx_poem.coupling.edits import Rewrite
from onnx_poem.coupling.ops.activations import ELEMENTWISE, IDENTITY_ON, activation_of
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView
from onnx_poem.solvers.activations import KINDS, apply


def _group_with(view: GraphView, kind: type, residual: bool = False) -> ChannelGroup:
    return next(g for g in find_groups(view, residual=residual).groups if g.edits_of(kind))


def _keep_at(index: tuple[int, ...] | None, positions: list[int]) -> np.ndarray:
    """The atoms at ``positions`` of a member with ``index`` (atom → position)."""
    idx = np.arange(len(positions)) if index is None else np.asarray(index)
    return np.sort(np.flatnonzero(np.isin(idx, positions)))


def _graph_after(rw: Rewrite, model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    dropped: set[str] = set()
    for edit in rw.graph_edits():
        dropped.update(edit(copy))
    return copy, dropped


def test_pad_fix_counts_the_kept_channels_in_each_padded_region() -> None:
    """Option-A shortcut: 4 channels padded 2 before and 2 after into 8; keeping output positions 0, 2, 5 and 7
    leaves one padded channel before (0; 2 is the input's first) and one after (7)."""
    view = GraphView.build(BUILDERS["resnet_option_a"]())
    g = _group_with(view, PadFix, residual=True)
    (fix,) = g.edits_of(PadFix)
    assert (fix.before, fix.after, fix.size) == (2, 2, 8)
    rw = Rewrite(view)
    fix.apply(rw, g, _keep_at(fix.index, [0, 2, 5, 7]))
    assert rw.arrays[fix.pads].tolist() == [0, 1, 0, 0, 0, 1, 0, 0]
    assert set(fix.constants(view)) == {fix.pads}


def test_range_fix_moves_slice_bounds_and_split_sizes() -> None:
    """``Split [4, 4]`` and ``Slice 2:6`` of 8 channels; keeping channels 1, 2, 5 and 7: the split becomes
    [2, 2] (a sizes input of its own), the slice 1:3 (channels 2 and 5 are those it kept)."""
    view = GraphView.build(split_slice())
    g = _group_with(view, RangeFix)
    keep = np.array([1, 2, 5, 7])
    rw = Rewrite(view)
    for fix in g.edits_of(RangeFix):
        fix.apply(rw, g, keep)
    split, sliced = (
        next(f for f in g.edits_of(RangeFix) if view.nodes[f.node].op_type == op) for op in ("Split", "Slice")
    )
    starts, ends = view.nodes[sliced.node].input[1:3]
    assert rw.arrays[starts].tolist() == [1] and rw.arrays[ends].tolist() == [3]
    assert set(sliced.constants(view)) == {starts, ends} and not list(split.constants(view))
    model, _ = _graph_after(rw, view.model)
    node = model.graph.node[split.node]
    sizes = next(t for t in model.graph.initializer if t.name == node.input[1])
    assert numpy_helper.to_array(sizes).tolist() == [2, 2]


def test_grouped_conv_fix_sets_group_to_kept_blocks() -> None:
    view = GraphView.build(grouped_conv())
    g = _group_with(view, Grouped)
    (fix,) = g.edits_of(Grouped)
    assert g.block == 2 and fix.per_group == 2
    rw = Rewrite(view)
    fix.apply(rw, g, np.array([0, 3]))  # 2 of the 4 conv groups
    model, _ = _graph_after(rw, view.model)
    assert helper.get_attribute_value(next(a for a in model.graph.node[fix.node].attribute if a.name == "group")) == 2
    assert not rw.arrays


def test_shuffle_fix_gathers_the_kept_channels_in_shuffled_order() -> None:
    """Shuffle of 8 channels in 2 groups: channel c goes to (c % 4)·2 + c // 4.  Keeping input channels 0, 1, 4
    and 6 (output positions 0, 2, 1, 5): the Gather reads the pruned input at [0, 2, 1, 3]."""
    view = GraphView.build(channel_shuffle())
    g = _group_with(view, ShuffleFix)
    (fix,) = g.edits_of(ShuffleFix)
    keep = np.array([a for a, pos in enumerate(fix.source) if pos in (0, 1, 4, 6)])
    assert fix.indices(keep).tolist() == [0, 2, 1, 3]
    rw = Rewrite(view)
    fix.apply(rw, g, keep)
    model, dropped = _graph_after(rw, view.model)
    gather = model.graph.node[fix.nodes[0]]
    assert gather.op_type == "Gather" and gather.output[0] == view.nodes[fix.nodes[2]].output[0]
    assert dropped == {model.graph.node[fix.nodes[1]].output[0], model.graph.node[fix.nodes[2]].output[0]}


def test_reshape_fix_writes_the_kept_columns() -> None:
    """``Reshape`` to ``[N, C·16]`` before a Gemm: 3 kept channels of 4x4 positions → 48."""
    view = GraphView.build(BUILDERS["reshape_gemm"]())
    g = _group_with(view, ReshapeFix)
    (fix,) = g.edits_of(ReshapeFix)
    rw = Rewrite(view)
    fix.apply(rw, g, np.array([0, 2, 5]))
    assert rw.arrays[fix.shape].reshape(-1)[fix.position] == 3 * 16


def test_every_activation_matches_onnxruntime() -> None:
    """Each registry entry the solvers model computes, in onnxruntime, what the solvers think it computes (its
    parameters read from the node's attributes), and is the identity where it says so."""
    x = np.linspace(-4, 4, 97, dtype=np.float32).reshape(1, 97)
    attrs = {"LeakyRelu": {"alpha": 0.3}, "HardSigmoid": {"alpha": 0.3, "beta": 0.4}, "Elu": {"alpha": 0.7}}
    for op, e in ELEMENTWISE.items():
        if e.kind is None and op not in IDENTITY_ON:
            continue
        assert e.kind is None or e.kind in KINDS, op
        inputs = ["x"]
        inits = []
        if op == "Clip":
            inputs += ["lo", "hi"]
            inits = [numpy_helper.from_array(np.float32(-1.5), "lo"), numpy_helper.from_array(np.float32(2.5), "hi")]
        if op == "PRelu":
            inputs.append("slope")
            inits = [numpy_helper.from_array(np.full((1, 97), 0.2, np.float32), "slope")]
        opset = 20 if op == "Gelu" else 17
        node = helper.make_node(op, inputs, ["y"], **attrs.get(op, {}))
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 97])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 97])], inits,
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        view = GraphView.build(model)
        if e.kind is not None:
            act = activation_of(view, 0)
            assert act is not None, op
            np.testing.assert_allclose(apply(act.kind, act.params, x.astype(np.float64)), y, atol=2e-6, err_msg=op)
        if op in IDENTITY_ON:
            lo, hi = IDENTITY_ON[op]
            inside = (x >= lo) & (x <= hi)
            np.testing.assert_array_equal(y[inside], x[inside], err_msg=op)


@pytest.fixture
def registry() -> Iterator[dict[str, list[flow.OpKind]]]:
    """The registry, restored after the test."""
    saved = {op: list(kinds) for op, kinds in flow.KINDS.items()}
    yield flow.KINDS
    flow.KINDS.clear()
    flow.KINDS.update(saved)


def _sine_model() -> onnx.ModelProto:
    """conv(3→6) → Sin → conv(6→4): ``Sin`` is elementwise, but no op kind knows it."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 6, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Sin", ["a"], ["s"], name="sin"),
        helper.make_node("Conv", ["s", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "sine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], [w1, w2],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_new_op_is_one_registration(registry: dict[str, list[flow.OpKind]]) -> None:
    """``Sin`` stops the group ("not supported"); one :func:`flow.register` call with a flow rule and the
    group is found and pruned, the model valid and smaller."""
    model = _sine_model()
    before = find_groups(GraphView.build(model))
    assert not before.groups and "op Sin is not supported" in before.unprunable[0].reason

    def sine(view: GraphView, node: int, slot: int, edge: flow.Edge, channels: int) -> flow.Step:
        return flow.Through((flow.out_edge(view, node, edge),))

    flow.register(flow.OpKind("sine", ("Sin",), flow=sine))
    (g,) = find_groups(GraphView.build(model)).groups
    assert g.channels == 6 and g.consumers[0].label == "conv2"
    x = inputs_for(model, 32)
    pruned, rep = prune(model, ratio=0.5, calib={"x": x}, samples=32, allocation="uniform")
    assert [(g["channels"], g["kept"]) for g in rep.groups] == [(6, 3)]
    onnx.checker.check_model(pruned, full_check=True)
    w1 = next(t for t in pruned.graph.initializer if t.name == "w1")
    assert w1.dims[0] == 3
    out = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x[:4]})[
        0
    ]
    assert out.shape == (4, 4, 6, 6) and np.isfinite(out).all()


def test_every_module_registers_kinds_and_the_table_lists_it() -> None:
    """Each module of the ops package registers at least one kind, and the package's table names it."""
    modules = {k.flow.__module__ if k.flow else (k.hook or k.early or k.producer).__module__  # type: ignore[union-attr]
               for kinds in flow.KINDS.values() for k in kinds if (k.flow or k.hook or k.early or k.producer)}  # fmt: skip
    names = {m.rsplit(".", 1)[1] for m in modules}
    listed = {
        line.split()[0] for line in (ops.__doc__ or "").splitlines() if line and line[0].isalpha() and "  " in line
    }
    assert names == listed - {"module"}, (names, listed)


def test_heads_pass_only_kinds_that_take_them() -> None:
    assert flow.heads_stop("Reshape") is None and flow.heads_stop("Concat") is None
    assert flow.heads_stop("Pad") == "attention heads reach a Pad"
    assert "grouped-query attention" in (flow.heads_stop("Expand") or "")
    assert flow.heads_stop("Conv") == "attention heads reach a Conv"


def test_folded_builders_give_the_same_groups_twice() -> None:
    """The registry is read, not changed, by tracing (no kind state leaks from one model to the next)."""
    for name in ("channel_shuffle", "resnet_option_a", "split_slice"):
        view = GraphView.build(fold_constants(BUILDERS[name]()))
        assert find_groups(view, residual=True) == find_groups(view, residual=True)


def test_the_ops_command_lists_every_registered_op(registry: dict[str, list[flow.OpKind]]) -> None:
    """``onnx-poem ops`` prints one line per op type with its kinds' descriptions; an op registered later is
    listed too (the command reads the registry), and every kind says what it does."""
    from click.testing import CliRunner

    from onnx_poem.cli import main

    assert all(k.doc for kinds in registry.values() for k in kinds)
    flow.register(flow.OpKind("sine", ("Sin",), doc="elementwise sine: channels pass"))
    res = CliRunner().invoke(main, ["ops"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines()}
    assert set(lines) == set(registry)
    assert "sine: elementwise sine" in lines["Sin"]
    assert "[flow, producer]" in lines["Conv"] and "(relu)" in lines["Relu"] and "(relu)" not in lines["Abs"]


def test_inspect_names_the_ops_no_kind_takes(tmp_path: Path) -> None:
    """``inspect`` on a model whose channels reach an op no kind knows names that op and points to ``ops``."""
    from click.testing import CliRunner

    from onnx_poem.cli import main

    path = tmp_path / "sine.onnx"
    onnx.save(_sine_model(), str(path))
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "op Sin is not supported" in res.output and "no op kind takes Sin: `onnx-poem ops`" in res.output
