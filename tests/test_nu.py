"""Neuro-Unification (``--method nu``): a unit that another one explains is merged into it, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_poem import prune
from onnx_poem.solvers.merge import channel_moments, residuals
from onnx_poem.solvers.reconstruct import LayerData, Samples


def _mlp_with_a_twin() -> onnx.ModelProto:
    """``relu(x W1 + b1) W2`` with hidden unit 5 = 2 × hidden unit 2 (relu(2z) = 2 relu(z)): unit 5 is
    explained exactly by unit 2 (α = 2, β = 0)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 8)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(8)).astype(np.float32)
    w1[:, 5], b1[5] = 2 * w1[:, 2], 2 * b1[2]
    w2 = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Add", ["a", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "twin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_twin_unit_is_merged_and_the_output_is_kept_exactly() -> None:
    model = _mlp_with_a_twin()
    x = np.random.default_rng(1).standard_normal((256, 6)).astype(np.float32)
    pruned, rep = prune(model, ratio=1 / 8, calib=x, method="nu", allocation="uniform")
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.groups[0]["kept"] == 7
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(pruned), run(model), rtol=1e-4, atol=1e-4)
    # without merging, dropping either twin changes the output
    _, l1 = prune(model, ratio=1 / 8, calib=x, method="l1", allocation="uniform")
    assert l1.agreement["y"]["rel_error"] > 1e-2


def test_the_residual_of_an_affine_copy_is_zero() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 1))
    X = np.concatenate([a, 3 * a - 1, rng.standard_normal((500, 1))], axis=1)
    Xb = np.concatenate([X, np.ones((500, 1))], axis=1)
    empty = Samples(np.zeros((0, 3)), np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((0, 1)))
    d = LayerData(
        G=Xb.T @ Xb, P=np.zeros((1, 4)), Gw=Xb.T @ Xb, Pw=np.zeros((1, 4)), W0=np.ones((1, 4)), k=1, count=500,
        activation="identity", act_params=(), fit=empty, held=empty,
    )  # fmt: skip
    V, means = channel_moments(d)
    R = residuals(V)
    assert R[1, 0] < 1e-8 and R[0, 1] < 1e-8 and R[2, 0] > 100
    np.testing.assert_allclose(means, X.mean(axis=0), atol=1e-12)
