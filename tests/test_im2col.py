"""im2col at sampled positions reproduces onnxruntime's own conv output."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnx_poem.calibration.im2col import input_samples, output_samples, positions_of, sample_positions
from onnx_poem.coupling import find_groups
from onnx_poem.graph import GraphView


def _conv_pair(
    cin: int, k: int, stride: int, pad: tuple[int, int, int, int], dil: int, auto_pad: str, h: int, w: int, seed: int
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((cin, 2, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((5, cin, k, k)).astype(np.float32)
    attrs: dict[str, object] = {"kernel_shape": [k, k], "strides": [stride] * 2, "dilations": [dil] * 2}
    if auto_pad == "NOTSET":
        attrs["pads"] = list(pad)
    else:
        attrs["auto_pad"] = auto_pad
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["y"], **attrs),
    ]
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@settings(max_examples=40, deadline=None)
@given(
    cin=st.integers(1, 4),
    k=st.sampled_from([1, 2, 3, 5]),
    stride=st.integers(1, 3),
    pad=st.tuples(*[st.integers(0, 2)] * 4),
    dil=st.integers(1, 2),
    auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    h=st.integers(6, 11),
    w=st.integers(6, 11),
    seed=st.integers(0, 5),
)
def test_patches_times_weights_equal_runtime_conv(cin, k, stride, pad, dil, auto_pad, h, w, seed) -> None:
    assume(dil == 1 or not auto_pad.startswith("SAME"))  # onnxruntime rejects that combination
    extent = dil * (k - 1) + 1
    assume(extent <= min(h + pad[0] + pad[2], w + pad[1] + pad[3]) if auto_pad == "NOTSET" else extent <= min(h, w))
    m = _conv_pair(cin, k, stride, pad, dil, auto_pad, h, w, seed)
    view = GraphView.build(m)
    c = find_groups(view).groups[0].consumers[0]
    x = np.random.default_rng(seed).standard_normal((2, 2, h, w)).astype(np.float32)
    sess = ort.InferenceSession(_with_output(m, "a").SerializeToString(), providers=["CPUExecutionProvider"])
    a, y = sess.run(["a", "y"], {"x": x})
    total = positions_of(c, a.shape)
    assert total == y.shape[2] * y.shape[3]
    pos, ok = sample_positions(total, 7, 2, np.random.default_rng(seed))
    assert ok.all()
    cols = input_samples(c, a.astype(np.float64), pos)
    W = view.const("w2").reshape(5, -1)
    np.testing.assert_allclose(cols @ W.T, output_samples(c, y, pos), rtol=1e-4, atol=1e-4)


def _with_output(m: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return out


def test_sample_positions_are_distinct_and_seeded() -> None:
    a, _ = sample_positions(100, 10, 3, np.random.default_rng(1))
    b, _ = sample_positions(100, 10, 3, np.random.default_rng(1))
    assert a.shape == (3, 10) and (a == b).all()
    assert all(len(set(r)) == 10 for r in a)
    assert sample_positions(5, 10, 2, np.random.default_rng(0))[0].tolist() == [list(range(5))] * 2


def test_masked_positions_prefer_valid_tokens() -> None:
    valid = np.zeros((3, 40), dtype=bool)
    valid[0, :25] = True  # more valid tokens than needed
    valid[1, :4] = True  # fewer
    pos, ok = sample_positions(40, 10, 3, np.random.default_rng(0), valid)
    assert ok[0].all() and (pos[0] < 25).all()
    assert ok[1].sum() == 4 and set(pos[1][ok[1]]) == {0, 1, 2, 3}
    assert not ok[2].any()


@settings(max_examples=40, deadline=None)
@given(
    cin=st.integers(1, 4),
    k=st.sampled_from([1, 2, 3, 4]),
    stride=st.integers(1, 3),
    pad=st.tuples(*[st.integers(0, 3)] * 4),
    dil=st.integers(1, 2),
    out_pad=st.integers(0, 2),
    h=st.integers(3, 7),
    w=st.integers(3, 7),
    seed=st.integers(0, 5),
)
def test_patches_times_weights_equal_runtime_conv_transpose(cin, k, stride, pad, dil, out_pad, h, w, seed) -> None:
    assume(out_pad < stride)  # onnxruntime requires output_padding < stride
    ho = (h - 1) * stride - pad[0] - pad[2] + dil * (k - 1) + 1 + out_pad
    wo = (w - 1) * stride - pad[1] - pad[3] + dil * (k - 1) + 1 + out_pad
    assume(ho > 0 and wo > 0)
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((cin, 2, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((cin, 5, k, k)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]),
        helper.make_node(
            "ConvTranspose",
            ["a", "w2"],
            ["y"],
            kernel_shape=[k, k],
            strides=[stride] * 2,
            dilations=[dil] * 2,
            pads=list(pad),
            output_padding=[out_pad] * 2,
        ),
    ]
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    view = GraphView.build(m)
    from onnx_poem.weights import weight_matrix

    c = find_groups(view).groups[0].consumers[0]
    assert c.kind == "convt"
    x = rng.standard_normal((2, 2, h, w)).astype(np.float32)
    sess = ort.InferenceSession(_with_output(m, "a").SerializeToString(), providers=["CPUExecutionProvider"])
    a, y = sess.run(["a", "y"], {"x": x})
    total = positions_of(c, a.shape)
    assert total == y.shape[2] * y.shape[3]
    pos, _ = sample_positions(total, 9, 2, np.random.default_rng(seed))
    cols = input_samples(c, a.astype(np.float64), pos)
    np.testing.assert_allclose(cols @ weight_matrix(view, c).T, output_samples(c, y, pos), rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    cin=st.integers(1, 4),
    k=st.sampled_from([1, 2, 3, 5]),
    stride=st.integers(1, 3),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dil=st.integers(1, 2),
    auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "VALID"]),
    length=st.integers(6, 14),
    seed=st.integers(0, 5),
)
def test_patches_times_weights_equal_runtime_conv_1d(cin, k, stride, pad, dil, auto_pad, length, seed) -> None:
    """A 1-D conv (audio) is handled as a 2-D conv over height 1."""
    assume(dil == 1 or not auto_pad.startswith("SAME"))
    assume(dil * (k - 1) + 1 <= length + (sum(pad) if auto_pad == "NOTSET" else 0))
    rng = np.random.default_rng(seed)
    attrs: dict[str, object] = {"kernel_shape": [k], "strides": [stride], "dilations": [dil]}
    if auto_pad == "NOTSET":
        attrs["pads"] = list(pad)
    else:
        attrs["auto_pad"] = auto_pad
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1]),
            helper.make_node("Conv", ["a", "w2"], ["y"], **attrs),
        ],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(rng.standard_normal((cin, 2, 1)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((5, cin, k)).astype(np.float32), "w2"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    view = GraphView.build(m)
    c = find_groups(view).groups[0].consumers[0]
    assert c.kernel == (1, k)
    x = rng.standard_normal((2, 2, length)).astype(np.float32)
    sess = ort.InferenceSession(_with_output(m, "a").SerializeToString(), providers=["CPUExecutionProvider"])
    a, y = sess.run(["a", "y"], {"x": x})
    total = positions_of(c, a.shape)
    assert total == y.shape[2]
    pos, _ = sample_positions(total, 5, 2, rng)
    cols = input_samples(c, a.astype(np.float64), pos)
    np.testing.assert_allclose(
        cols @ view.const("w2").reshape(5, -1).T, output_samples(c, y, pos), rtol=1e-4, atol=1e-4
    )
