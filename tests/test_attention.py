"""Attention heads as coupled groups (onnx_poem.coupling.ops.attention): found, pruned, rewritten, exact."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from models import attention, attention_inputs
from onnx_poem import prune
from onnx_poem.allocation import MacsTable
from onnx_poem.cli import main
from onnx_poem.coupling import ReshapeFix, find_groups
from onnx_poem.coupling.flow import Edge
from onnx_poem.coupling.ops.attention import carries
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView
from onnx_poem.report import count_macs, node_macs

STYLES = ("const", "computed", "rotary")


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0])


def _view(model: onnx.ModelProto) -> GraphView:
    return GraphView.build(model, input_shapes={"x": (2, 6, 16), "attention_mask": (2, 6)})


@pytest.mark.parametrize("style", STYLES)
def test_heads_are_one_group_of_q_k_v_and_the_output_projection(style: str) -> None:
    model = attention(style=style)
    view = _view(model)
    groups = find_groups(view).groups
    heads = [g for g in groups if g.heads]
    assert len(heads) == 1
    g = heads[0]
    assert (g.channels, g.block) == (4, 4)  # 4 heads of 4 channels
    assert len(g.producers) == 3 and not g.residual
    assert [view.nodes[c.node].op_type for c in g.consumers] == ["MatMul"]
    assert g.consumers[0].in_channels == 4
    assert sorted(view.nodes[n].op_type for n in g.scaled) == ["MatMul", "MatMul"]  # q·kᵀ and p·v
    assert len(g.edits_of(ReshapeFix)) == 4  # three splits (head count) and the merge (H·d)
    assert sorted(r.per for r in g.edits_of(ReshapeFix)) == [1, 4, 4, 4]


def test_broadcast_mask_does_not_carry_the_channels() -> None:
    view = _view(attention())
    mask = next(n.output[0] for n in view.nodes if n.op_type == "Mul" and "attention_mask" not in n.input)
    assert view.shapes[mask][1:3] == (1, 1)
    assert not carries(view, mask, Edge("scores", 1, 4, per=4))
    assert carries(view, "x", Edge("y", 2, 3))


@pytest.mark.parametrize("style", STYLES)
def test_nothing_pruned_reproduces_the_original(style: str) -> None:
    model = attention(style=style)
    pruned, _ = prune(model, ratio=0.0, calib=attention_inputs(64, 6), samples=64)
    feed = attention_inputs(3, 9, seed=1)
    np.testing.assert_allclose(_run(pruned, feed), _run(model, feed), rtol=0, atol=1e-5)


def test_a_dead_head_is_removed_exactly() -> None:
    """Head 1 has zero value weights: its context is 0, so removing it (and refitting Wo) changes nothing,
    and the output error the selection measures picks it."""
    model = attention(style="computed", dead=1)
    pruned, _ = prune(model, ratio=0.25, calib=attention_inputs(128, 6), samples=128, allocation="uniform")
    sizes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    q_bias = [t for t in pruned.graph.initializer if len(t.dims) == 1 and t.dims[0] == 12]
    assert len(q_bias) == 3, sizes  # q, k, v biases: 3 heads of 4
    for tokens in (1, 4, 11):
        feed = attention_inputs(3, tokens, seed=tokens)
        np.testing.assert_allclose(_run(pruned, feed), _run(model, feed), rtol=0, atol=2e-4)


@pytest.mark.parametrize("style", STYLES)
def test_pruned_heads_run_at_every_batch_and_length(style: str) -> None:
    model = attention(style=style)
    pruned, rep = prune(model, ratio=0.5, calib=attention_inputs(128, 6), samples=128, allocation="uniform")
    onnx.checker.check_model(pruned, full_check=True)
    for n, tokens in ((1, 1), (2, 7), (5, 3)):
        assert _run(pruned, attention_inputs(n, tokens, seed=n)).shape == (n, tokens, 16)
    q = [t for t in pruned.graph.initializer if t.name.startswith("b") and tuple(t.dims) == (8,)]
    assert len(q) == 3  # 2 heads kept of q, k and v
    assert rep.macs_after < 0.75 * rep.macs_before
    # the heads' products scale with the kept heads: the MACs table predicts the pruned model's count
    sample = {k: v[:1] for k, v in attention_inputs(1, 6).items()}
    view = _view(model)
    groups = [g for g in find_groups(view).groups if g.heads]
    table = MacsTable.build(groups, node_macs(model, sample))
    predicted = table.predict(groups, {groups[0].id: 2})
    assert predicted == pytest.approx(count_macs(pruned, sample) / count_macs(model, sample), rel=1e-9)


def test_head_count_read_at_run_time_is_left_with_the_reason() -> None:
    view = _view(attention(style="channel_read"))
    coupling = find_groups(view)
    assert not any(g.heads for g in coupling.groups)
    assert any("the channel count is read at run time" in u.reason for u in coupling.unprunable)


def test_inspect_lists_head_groups(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "attn.onnx"
    onnx.save(attention(style="computed"), str(path))
    out = CliRunner().invoke(main, ["inspect", str(path)])
    assert out.exit_code == 0, out.output
    assert "4 attention heads of 4 channels" in out.output


@pytest.mark.parametrize("style", STYLES)
def test_width_model_of_heads_has_the_real_plans_shapes(style: str) -> None:
    """The latency budget's models of given widths (no calibration) prune heads as the real run does."""
    from onnx_poem.allocation import region_keeps
    from onnx_poem.latency.widths import width_model

    model = attention(style=style)
    calib = attention_inputs(64, 6)
    pruned, _ = prune(model, ratio=0.5, calib=calib, method="l1", allocation="uniform")
    view = _view(fold_constants(model))  # as the run analyses it (shape pieces folded)
    coupling = find_groups(view)
    widths = width_model(
        view, {g.id: g for g in coupling.groups}, {g.id: region_keeps(g, 0.5) for g in coupling.groups}
    )
    real = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    mine = {t.name: tuple(t.dims) for t in widths.graph.initializer}
    assert {k: v for k, v in mine.items() if k in real} == real
    onnx.checker.check_model(widths, full_check=True)
    feed = attention_inputs(2, 5, seed=3)
    assert _run(widths, feed).shape == _run(pruned, feed).shape == (2, 5, 16)


def test_saved_plan_of_heads_applies_to_the_same_bytes(tmp_path: object) -> None:
    """A plan pruning heads (CLI, .npz calibration with a mask input) reapplies without calibration."""
    from pathlib import Path

    work = Path(str(tmp_path))
    onnx.save(attention(style="computed"), str(work / "attn.onnx"))
    np.savez(work / "calib.npz", **attention_inputs(96, 6))
    runner = CliRunner()
    first = ["--ratio", "0.5", "--calib", str(work / "calib.npz"), "-o", str(work / "a.onnx")]
    res = runner.invoke(main, [str(work / "attn.onnx"), *first, "--save-plan", str(work / "p.json")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        main, [str(work / "attn.onnx"), "--apply-plan", str(work / "p.json"), "-o", str(work / "b.onnx")]
    )
    assert res.exit_code == 0, res.output
    assert (work / "a.onnx").read_bytes() == (work / "b.onnx").read_bytes()
    heads = [t for t in onnx.load(str(work / "b.onnx")).graph.initializer if t.name.startswith("b")]
    assert any(tuple(t.dims) != (16,) for t in heads)  # heads went


def test_concat_along_another_axis_joins_its_inputs() -> None:
    """Channels concatenated along the token axis (both halves from one producer) stay one group."""
    from onnx import TensorProto, helper, numpy_helper

    from models import finish

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W2")
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["y"]),
        helper.make_node("Relu", ["y"], ["a"]),
        helper.make_node("Sigmoid", ["y"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
        helper.make_node("MatMul", ["c", "W2"], ["out"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    model = finish(helper.make_graph(nodes, "cat", [x], [out], [w1, w2]))
    groups = find_groups(GraphView.build(model, input_shapes={"x": (2, 3, 8)})).groups
    assert [(g.channels, len(g.consumers), g.residual) for g in groups] == [(8, 1, False)]


GQA_STYLES = ("const", "computed", "rotary")


@pytest.mark.parametrize("style", GQA_STYLES)
def test_grouped_query_heads_are_one_group_of_kv_heads_with_their_query_heads(style: str) -> None:
    """Two key/value heads, each repeated for two of four query heads: an atom is one key/value head with its
    query heads (q's and Wo's positions count pairs of heads); the Expand shape (computed once, read by k and v)
    is given to each reader before the analysis."""
    from onnx_poem.fold import fold_constants

    model = fold_constants(attention(style=style, kv_heads=2))
    view = _view(model)
    heads = [g for g in find_groups(view).groups if g.heads]
    assert len(heads) == 1
    g = heads[0]
    assert (g.channels, g.block, g.repeat) == (2, 4, 2)
    assert g.consumers[0].in_channels == 2 and g.consumers[0].unit == 2
    units = {view.const(p.name).shape[-1]: p.unit for p in g.params if view.const(p.name).ndim == 2}
    assert units == {16: 2, 8: 1}  # Wq (4 heads): pairs of heads; Wk, Wv (2 heads): one head
    expands = [n for n in view.nodes if n.op_type == "Expand"]
    assert len(expands) == 2 and expands[0].input[1] != expands[1].input[1]


@pytest.mark.parametrize("style", GQA_STYLES)
def test_grouped_query_attention_pruned_runs_at_every_batch_and_length(style: str) -> None:
    model = attention(style=style, kv_heads=2)
    calib = attention_inputs(128, 6)
    same, _ = prune(model, ratio=0.0, calib=calib, samples=128)
    feed = attention_inputs(3, 9, seed=1)
    np.testing.assert_allclose(_run(same, feed), _run(model, feed), rtol=0, atol=1e-5)
    pruned, _ = prune(model, ratio=0.5, calib=calib, samples=128, allocation="uniform")
    onnx.checker.check_model(pruned, full_check=True)
    for n, tokens in ((1, 1), (2, 7), (5, 3)):
        assert _run(pruned, attention_inputs(n, tokens, seed=n)).shape == (n, tokens, 16)
    dims = sorted(tuple(t.dims) for t in pruned.graph.initializer if len(t.dims) == 2)
    assert dims == [(8, 16), (16, 4), (16, 4), (16, 8)]  # Wo rows, Wk, Wv, Wq: one key/value head, two query
    sample = {k: v[:1] for k, v in calib.items()}
    from onnx_poem.fold import fold_constants

    folded = fold_constants(model)
    groups = [g for g in find_groups(_view(folded)).groups if g.heads]
    predicted = MacsTable.build(groups, node_macs(folded, sample)).predict(groups, {groups[0].id: 1})
    assert predicted == pytest.approx(count_macs(pruned, sample) / count_macs(model, sample), rel=1e-9)


def test_a_dead_key_value_head_goes_with_its_query_heads_exactly() -> None:
    """Key/value head 1 has zero value weights: the context of query heads 2 and 3 is 0, so removing the three
    together (and refitting Wo on heads 0 and 1) changes nothing, and the selection picks that group."""
    model = attention(style="computed", kv_heads=2, dead=1)
    pruned, rep = prune(model, ratio=0.5, calib=attention_inputs(128, 6), samples=128, allocation="uniform")
    row = rep.to_dict()["groups"][0]
    assert (row["unit"], row["channels"], row["kept"], row["query_heads_per_unit"]) == ("key/value head", 8, 4, 2)
    for tokens in (1, 4, 11):
        feed = attention_inputs(3, tokens, seed=tokens)
        np.testing.assert_allclose(_run(pruned, feed), _run(model, feed), rtol=0, atol=2e-4)


def test_inspect_names_grouped_query_heads(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "gqa.onnx"
    onnx.save(attention(style="computed", kv_heads=2), str(path))
    out = CliRunner().invoke(main, ["inspect", str(path)])
    assert out.exit_code == 0, out.output
    assert "2 key/value heads of 4 channels, each shared by 2 query heads" in out.output
