"""nn.MultiheadAttention's fused in_proj as dynamo writes it: split into one layer per part, outputs kept."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_poem.fold import fold_constants
from onnx_poem.fused import split_fused_projections


def _fused(perm: tuple[int, ...] = (3, 1, 2, 0, 4)) -> onnx.ModelProto:
    """``x (N, T, 8)`` → ``x·W + b (N, T, 24)`` → Reshape ``[0, 0, 3, 8]`` → Unsqueeze(0) → Transpose ``perm`` →
    Squeeze(-2) → Gather 0, 1, 2 on axis 0 → ``q + k·v`` (dynamo's ``in_proj`` chain with the default perm)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 24)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([0, 0, 3, 8], np.int64), "shape"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-2], np.int64), "minus2"),
        *(numpy_helper.from_array(np.array(i, np.int64), f"i{i}") for i in range(3)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["p0"]),
        helper.make_node("Add", ["p0", "b"], ["p"]),
        helper.make_node("Reshape", ["p", "shape"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "zero"], ["u"]),
        helper.make_node("Transpose", ["u"], ["t"], perm=list(perm)),
        helper.make_node("Squeeze", ["t", "minus2"], ["s"]),
        *(helper.make_node("Gather", ["s", f"i{i}"], [n], axis=0) for i, n in enumerate(("q", "k", "v"))),
        helper.make_node("Mul", ["k", "v"], ["kv"]),
        helper.make_node("Add", ["q", "kv"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def test_a_fused_projection_becomes_one_layer_per_part() -> None:
    model = _fused()
    split = fold_constants(model)
    ops = [n.op_type for n in split.graph.node]
    assert "Gather" not in ops and "Transpose" not in ops and ops.count("MatMul") == 3
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 5, 8)).astype(np.float32)
        np.testing.assert_allclose(_run(split, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_a_chain_that_reorders_the_other_axes_is_left_alone() -> None:
    """Parts taken out of ``(3, T, N, 8)`` (batch and tokens swapped) are not ``x·W_i``: nothing changes."""
    model = _fused(perm=(3, 2, 1, 0, 4))
    assert split_fused_projections(model) is model
