"""Exporters' shape arithmetic folded (dynamic batch kept), channel shuffles pruned as permutations."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from models import channel_shuffle, contrib_op, inputs_for, torchscript_shapes, torchscript_tokens
from onnx_poem import prune
from onnx_poem.coupling import ShuffleFix, find_groups
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView
from onnx_poem.shapefold import fold_shapes


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {model.graph.input[0].name: x})[0]


def test_shape_arithmetic_folds_and_keeps_the_batch_dynamic() -> None:
    model = torchscript_shapes()
    assert not find_groups(GraphView.build(model)).groups  # the Slices' bounds are computed: nothing found
    folded = fold_shapes(model)
    onnx.checker.check_model(folded, full_check=True)
    assert not any(n.op_type in ("Shape", "Gather", "Div") for n in folded.graph.node)
    reshape = next(n for n in folded.graph.node if n.op_type == "Reshape")
    shape = next(t for t in folded.graph.initializer if t.name == reshape.input[1])
    assert onnx.numpy_helper.to_array(shape).tolist() == [0, -1]  # the batch entry: copied from the input
    for n in (1, 5):  # any batch size, not just the ones evaluated
        x = inputs_for(model, n)
        np.testing.assert_allclose(run(model, x), run(folded, x), rtol=1e-5, atol=1e-6)
    assert len(find_groups(GraphView.build(folded)).groups) == 1


def test_a_model_that_cannot_run_at_the_sizes_tried_is_left_as_it_is() -> None:
    """An image height left dynamic: images of any size are not folded (strides make sizes coincide)."""
    model = torchscript_shapes()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    assert fold_shapes(model) is model


def _tokens(model: onnx.ModelProto, n: int, t: int) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(t).standard_normal((n, t, 8)).astype(np.float32)
    return s.run(None, {"x": x})[0]


def test_with_a_dynamic_sequence_length_what_does_not_depend_on_it_folds() -> None:
    """The chunk's Slice bounds are the same at every sequence length tried: constants, and the group before
    them is found; the flatten's ``T · 4`` stays computed, with its factor 4 folded in it."""
    model = torchscript_tokens()
    assert not find_groups(GraphView.build(model)).groups
    folded = fold_shapes(model)
    onnx.checker.check_model(folded, full_check=True)
    inits = {t.name for t in folded.graph.initializer}
    slices = [n for n in folded.graph.node if n.op_type == "Slice"]
    assert len(slices) == 2 and all(t in inits for n in slices for t in n.input[1:])
    mul = next(n for n in folded.graph.node if n.op_type == "Mul")
    assert sum(t in inits for t in mul.input) == 1  # Shape(y)[2] = 4 folded, Shape(y)[1] = T not
    assert "Shape" in [n.op_type for n in folded.graph.node]
    for n, t in ((1, 2), (4, 9), (2, 30)):  # sizes not among those tried too
        np.testing.assert_allclose(_tokens(folded, n, t), _tokens(model, n, t), rtol=1e-6, atol=1e-6)
    (g,) = find_groups(GraphView.build(folded)).groups
    assert g.channels == 16
    pruned, rep = prune(model, ratio=0.5, calib=np.random.default_rng(0).standard_normal((64, 6, 8)).astype(np.float32))
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.groups[0]["kept"] == 8 and _tokens(pruned, 3, 13).shape == (3, 52)


def test_shape_folded_model_prunes_to_a_smaller_valid_model() -> None:
    model = torchscript_shapes()
    x = inputs_for(model, 64)
    pruned, rep = prune(model, ratio=0.5, calib=x, seed=0)
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.macs_after < rep.macs_before
    assert run(pruned, inputs_for(model, 3)).shape == (3, 5)


def test_channel_shuffle_is_a_permutation_replaced_by_a_gather() -> None:
    model = channel_shuffle()
    (g,) = find_groups(GraphView.build(fold_constants(model))).groups
    assert g.channels == 12 and len(g.edits_of(ShuffleFix)) == 1  # 8 + the branch conv's 4, joined by the Concat
    pruned, _rep = prune(model, ratio=0.5, calib=inputs_for(model, 64), seed=0)
    ops = [n.op_type for n in pruned.graph.node]
    assert "Gather" in ops and "Transpose" not in ops
    gather = next(n for n in pruned.graph.node if n.op_type == "Gather")
    idx = next(t for t in pruned.graph.initializer if t.name == gather.input[1])
    kept = onnx.numpy_helper.to_array(idx)
    assert sorted(kept.tolist()) == list(range(len(kept))) and 0 < len(kept) < 8  # of the Concat's 8 channels
    x = inputs_for(model, 4)
    assert run(pruned, x).shape == run(model, x).shape


def test_shapes_inference_leaves_open_are_observed_from_a_run() -> None:
    """An onnxruntime contrib op (com.microsoft Gelu) has no ONNX shape inference: the flatten after it has an
    unknown size until one run of zero inputs of the calibration shapes tells it."""
    model = contrib_op()
    assert not find_groups(GraphView.build(model)).groups
    view = GraphView.build(model, input_shapes={"x": [1, 3, 6, 6]})
    assert len(find_groups(view).groups) == 1
    pruned, rep = prune(model, ratio=0.5, calib=inputs_for(model, 64), allocation="uniform")
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.macs_after < rep.macs_before


def test_a_size_divided_by_a_stride_is_not_folded() -> None:
    """PP-OCRv4's recogniser: ``T / 8`` is 1 at the small sizes tried (3, 5, 7); folding it broke the pruned
    model at real sizes. The run at 64 keeps it computed: the folded model still runs at any length."""
    from onnx import TensorProto, helper, numpy_helper

    i64 = np.int64
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((6, 4, 1)).astype(np.float32), "w")
    consts = [numpy_helper.from_array(np.array(v, i64), n) for n, v in (("i0", 0), ("i1", 1), ("i2", 2))]
    consts.append(numpy_helper.from_array(np.array([0], i64), "ax"))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1], strides=[8]),
        helper.make_node("Shape", ["y"], ["s"]),
        *(helper.make_node("Gather", ["s", f"i{k}"], [f"d{k}"], axis=0) for k in range(3)),
        helper.make_node("Mul", ["d1", "d2"], ["f"]),
        helper.make_node("Unsqueeze", ["d0", "ax"], ["u0"]),
        helper.make_node("Unsqueeze", ["f", "ax"], ["u1"]),
        helper.make_node("Concat", ["u0", "u1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["y", "shape"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "strided",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "T"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [w, *consts],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folded = fold_shapes(model)
    for t in (3, 20, 64):
        x = np.random.default_rng(t).standard_normal((2, 4, t)).astype(np.float32)
        want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        got = ort.InferenceSession(folded.SerializeToString()).run(None, {"x": x})[0]
        np.testing.assert_array_equal(got, want)
