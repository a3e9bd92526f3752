"""Exporters' constant plumbing: folded before the analysis, outputs unchanged, groups then pruned."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import BUILDERS, inputs_for
from onnx_poem import prune
from onnx_poem.fold import fold_constants


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.mark.parametrize("name", ["paddle_bias", "torch_dedup"])
def test_folding_keeps_the_outputs_and_removes_the_plumbing(name: str) -> None:
    model = BUILDERS[name]()
    folded = fold_constants(model)
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "Reshape" not in ops and "Identity" not in ops
    uses: dict[str, int] = {}
    for n in folded.graph.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    assert all(uses.get(t.name, 0) <= 1 for t in folded.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    x = inputs_for(model, 4)
    np.testing.assert_array_equal(_run(model, x), _run(folded, x))


def test_a_model_without_plumbing_is_returned_as_it_is() -> None:
    model = BUILDERS["conv_chain"]()
    assert fold_constants(model) is model


def test_a_shared_weight_matrix_is_not_copied() -> None:
    """Tied weights (a matrix read by two layers) stay shared: copying them would grow the model."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])],
        "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    model = helper.make_model(g)
    assert fold_constants(model) is model


@pytest.mark.parametrize("name", ["paddle_bias", "torch_dedup"])
def test_exporter_forms_are_pruned_like_plain_ones(name: str) -> None:
    model = BUILDERS[name]()
    x = inputs_for(model, 32)
    pruned, rep = prune(model, ratio=0.5, calib=x, positions=8, allocation="uniform")
    onnx.checker.check_model(pruned, full_check=True)
    assert len(rep.groups) == 2 and all(g["kept"] == g["channels"] // 2 for g in rep.groups)
    assert [u["reason"] for u in rep.unprunable] == [f"channels reach graph output '{model.graph.output[0].name}'"]
    same, _ = prune(model, ratio=0.0, calib=x, positions=8)
    np.testing.assert_allclose(_run(same, x[:4]), _run(model, x[:4]), rtol=1e-6, atol=1e-6)


def test_a_shape_concat_read_by_several_nodes_is_given_to_each_right_before_it() -> None:
    """dynamo computes grouped-query attention's Expand shape once for k and v (and for every layer): each
    reader gets its own copy, placed right before it (the cascade caches tensors by position), with its own
    integer constants; the outputs stay the same."""
    from models import attention, attention_inputs
    from onnx_poem.shapefold import fold_shapes

    model = attention(style="computed", kv_heads=2)
    folded = fold_constants(model)
    nodes = list(folded.graph.node)
    expands = [i for i, n in enumerate(nodes) if n.op_type == "Expand"]
    assert len(expands) == 2
    shapes = [nodes[i].input[1] for i in expands]
    assert len(set(shapes)) == 2
    for i in expands:
        assert nodes[i - 1].op_type == "Concat" and nodes[i - 1].output[0] == nodes[i].input[1]
    pieces = [set(nodes[i - 1].input) for i in expands]
    consts = {t.name for t in folded.graph.initializer}
    assert not (pieces[0] & pieces[1] & consts)  # no constant piece shared
    shaped = fold_shapes(model)  # size-independent shapes folded first; then the one shared Concat is copied
    assert sum(n.op_type == "Concat" for n in nodes) == sum(n.op_type == "Concat" for n in shaped.graph.node) + 1
    feed = attention_inputs(3, 5)
    run = [ort.InferenceSession(m.SerializeToString()).run(None, feed)[0] for m in (model, folded)]
    np.testing.assert_array_equal(run[0], run[1])
