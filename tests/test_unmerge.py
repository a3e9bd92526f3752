"""tf2onnx's einsum with the heads merged into the batch axis: shapes folded, MatMuls unmerged, outputs kept."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_poem.fold import fold_constants
from onnx_poem.shapefold import fold_shapes
from onnx_poem.unmerge import unmerge_batched_matmuls


def _scores(*, read_by_reshape: bool = True) -> onnx.ModelProto:
    """``x (N, 6, 8)`` → q, k (2 heads of 4) → ``Transpose (N, 2, 6, 4)`` → ``Reshape`` to the computed shape
    ``[N·2, -1, 4]`` (``ReduceProd`` of the first two dims, as tf2onnx computes it) → ``q·kᵀ (N·2, 6, 6)`` →
    ``Reshape [-1, 2, 6, 6]`` (or, ``read_by_reshape=False``, a ``Softmax`` of the merged scores)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "wq"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "wk"),
        numpy_helper.from_array(np.array([-1, 6, 2, 4], np.int64), "split"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "lead"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus"),
        numpy_helper.from_array(np.array([4], np.int64), "size"),
        numpy_helper.from_array(np.array([-1, 2, 6, 6], np.int64), "back"),
    ]
    nodes = []
    for s in ("q", "k"):
        nodes += [
            helper.make_node("MatMul", ["x", f"w{s}"], [f"{s}0"]),
            helper.make_node("Reshape", [f"{s}0", "split"], [f"{s}1"]),
            helper.make_node("Transpose", [f"{s}1"], [f"{s}h"], perm=[0, 2, 1, 3]),
            helper.make_node("Shape", [f"{s}h"], [f"{s}s"]),
            helper.make_node("Gather", [f"{s}s", "lead"], [f"{s}g"]),
            helper.make_node("ReduceProd", [f"{s}g"], [f"{s}p"], axes=[0], keepdims=1),
            helper.make_node("Concat", [f"{s}p", "minus", "size"], [f"{s}c"], axis=0),
            helper.make_node("Reshape", [f"{s}h", f"{s}c"], [f"{s}m"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["km"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["qm", "kt"], ["scores"]),
    ]
    if read_by_reshape:
        nodes.append(helper.make_node("Reshape", ["scores", "back"], ["out"]))
    else:
        nodes.append(helper.make_node("Softmax", ["scores"], ["out"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2, 6, 6] if read_by_reshape else ["M", 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def _consts(model: onnx.ModelProto, op: str) -> list[list[int]]:
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == op and n.input[1] in inits]


def test_a_shape_of_a_multiple_of_the_batch_folds_with_its_minus_one_resolved() -> None:
    """``[N·2, -1, 4]`` is ``[-1, 6, 4]`` at every batch size: the -1 resolves to 6 in every run."""
    folded = fold_shapes(_scores())
    assert [-1, 6, 4] in _consts(folded, "Reshape")
    assert not any(n.op_type in ("Shape", "ReduceProd") for n in folded.graph.node)
    x = np.random.default_rng(1).standard_normal((5, 6, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(folded, x), _run(_scores(), x))


def test_merged_batched_matmul_runs_on_the_unmerged_operands() -> None:
    model = _scores()
    folded = fold_constants(model)
    onnx.checker.check_model(folded, full_check=True)
    shapes = _consts(folded, "Reshape")
    assert shapes.count([0, 0, 6, 4]) == 2 and [-1, 2, 6, 6] in shapes
    perm = next(
        a.ints for n in folded.graph.node if n.op_type == "Transpose" and n.input[0] == "km" for a in n.attribute
    )
    assert list(perm) == [0, 1, 3, 2]
    for n in (1, 3, 4):
        x = np.random.default_rng(n).standard_normal((n, 6, 8)).astype(np.float32)
        np.testing.assert_allclose(_run(folded, x), _run(model, x), rtol=1e-6, atol=1e-5)


def test_merged_scores_read_by_another_op_stay_merged() -> None:
    """A Softmax of the merged ``(N·2, 6, 6)`` scores would see another shape: nothing is rewritten."""
    shaped = fold_shapes(_scores(read_by_reshape=False))
    assert unmerge_batched_matmuls(shaped) is shaped


def test_an_operand_from_a_constant_node_is_no_merged_operand() -> None:
    """PaddlePaddle's classifier reads its dense weight from a ``Constant`` node (no input): left as it is."""
    w = numpy_helper.from_array(np.ones((8, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["wc"], value=w), helper.make_node("MatMul", ["x", "wc"], ["out"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert unmerge_batched_matmuls(model) is model
