"""Keras' EinsumDense as tf2onnx can write it: dense ``Einsum`` nodes read as ``Reshape → MatMul``."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_poem.einsum import _form, dense_einsums_as_matmuls
from onnx_poem.fold import fold_constants


def _model() -> onnx.ModelProto:
    """``x (N, T, 8)`` → ``abc,cde->abde`` (into 2 heads of 4) → Relu → ``abcd,cde->abe`` (back to 8)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 2, 4)).astype(np.float32), "w_in"),
        numpy_helper.from_array(rng.standard_normal((2, 4, 8)).astype(np.float32), "w_out"),
    ]
    nodes = [
        helper.make_node("Einsum", ["x", "w_in"], ["h"], equation="abc,cde->abde"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Einsum", ["r", "w_out"], ["y"], equation="abcd,cde->abe"),
    ]
    graph = helper.make_graph(
        nodes,
        "einsum_dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def test_dense_einsums_become_matmuls_with_the_same_outputs() -> None:
    model = _model()
    folded = fold_constants(model)
    onnx.checker.check_model(folded, full_check=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "Einsum" not in ops and ops.count("MatMul") == 2
    for n, t in ((1, 3), (4, 7)):
        x = np.random.default_rng(n).standard_normal((n, t, 8)).astype(np.float32)
        np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_only_dense_forms_are_rewritten() -> None:
    assert _form("abcd,cde->abe", 3) == (2, 2)
    assert _form("abc,cd->abd", 2) == (2, 1)
    assert _form("abc,cd->adb", 2) is None  # the output's indices in another order
    assert _form("abcd,aecd->acbe", 4) is None  # attention scores: no index contracted at the end only
    assert _form("...c,cd->...d", 2) is None
    model = _model()
    model.graph.node[0].attribute[0].s = b"abc,cde->adbe"
    changed = dense_einsums_as_matmuls(model)
    assert [n.op_type for n in changed.graph.node].count("Einsum") == 1
