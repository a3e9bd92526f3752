"""Tiny ONNX graphs built in code for the tests (no binaries).

Every builder returns a ``ModelProto`` that passes ``onnx.checker`` (full
check); weights come from a seeded generator.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _B:
    """Small graph builder: ``t = b.conv(x, cout)`` etc. appends nodes and initializers."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}{self.n}"

    def const(self, arr: np.ndarray, p: str = "w") -> str:
        nm = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        *,
        stride: int = 1,
        pad: int = 1,
        group: int = 1,
        bias: bool = True,
        dilation: int = 1,
    ) -> str:
        w = (self.rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
        ins = [x, self.const(w)]
        if bias:
            ins.append(self.const((0.1 * self.rng.standard_normal(cout)).astype(np.float32), "b"))
        return self.node(
            "Conv",
            ins,
            kernel_shape=[k, k],
            pads=[pad] * 4,
            strides=[stride] * 2,
            group=group,
            dilations=[dilation] * 2,
        )

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [
            (1 + 0.2 * r.standard_normal(c)).astype(np.float32),
            (0.1 * r.standard_normal(c)).astype(np.float32),
            (0.1 * r.standard_normal(c)).astype(np.float32),
            (0.5 + r.random(c)).astype(np.float32),
        ]
        return self.node("BatchNormalization", [x, *(self.const(p, "bn") for p in params)], epsilon=1e-5)

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = (self.rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(cout)).astype(np.float32)
        return self.node("Gemm", [x, self.const(w), self.const(b, "b")], transB=1)

    def model(self, inputs: list[tuple[str, list[object]]], outputs: list[str], opset: int = 0) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes,
            "test",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        return finish(g, opset)


def finish(graph: onnx.GraphProto, opset: int = 0) -> onnx.ModelProto:
    """A checked model (IR 8, opset ``opset`` or :data:`OPSET`, shapes inferred) around ``graph``."""
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset or OPSET)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m, full_check=True)
    return m


def conv_chain(seed: int = 0, *, bn: str = "none") -> onnx.ModelProto:
    """conv(3→8) → [BN] → relu → [BN] → conv(8→12) → relu → conv(12→4) (output).

    ``bn``: ``none``, ``before`` (conv → BN → relu) or ``after`` (Keras order, relu → BN).
    """
    b = _B(seed)
    t = b.conv("x", 3, 8)
    if bn == "before":
        t = b.bn(t, 8)
    t = b.node("Relu", [t])
    if bn == "after":
        t = b.bn(t, 8)
    t = b.node("Relu", [b.conv(t, 8, 12, stride=2)])
    y = b.conv(t, 12, 4, k=1, pad=0)
    return b.model([("x", ["N", 3, 10, 10])], [y])


def flatten_gemm(seed: int = 0, *, reshape: bool = False) -> onnx.ModelProto:
    """conv(1→6) → relu → maxpool → flatten/reshape → gemm(6·16→10) → relu → gemm(10→3)."""
    b = _B(seed)
    t = b.node("MaxPool", [b.node("Relu", [b.conv("x", 1, 6)])], kernel_shape=[2, 2], strides=[2, 2])
    if reshape:
        t = b.node("Reshape", [t, b.const(np.array([-1, 96], dtype=np.int64), "shape")])
    else:
        t = b.node("Flatten", [t], axis=1)
    t = b.node("Relu", [b.gemm(t, 96, 10)])
    return b.model([("x", ["N", 1, 8, 8])], [b.gemm(t, 10, 3)])


def residual(seed: int = 0) -> onnx.ModelProto:
    """conv(3→8) → relu → [conv(8→6) → relu → conv(6→8)] + skip → relu → GAP → flatten → gemm(8→5)."""
    b = _B(seed)
    x0 = b.node("Relu", [b.conv("x", 3, 8)])
    t = b.node("Relu", [b.conv(x0, 8, 6)])
    t = b.node("Relu", [b.node("Add", [b.conv(t, 6, 8), x0])])
    t = b.node("Flatten", [b.node("GlobalAveragePool", [t])], axis=1)
    return b.model([("x", ["N", 3, 8, 8])], [b.gemm(t, 8, 5)])


def resnet_option_a(seed: int = 0) -> onnx.ModelProto:
    """Two stages of a CIFAR ResNet: stem(3→4), a block at 4 channels, a strided block to 8 channels
    whose shortcut is ``Slice`` (stride 2 on H, W) + channel ``Pad`` (2 before, 2 after), GAP → gemm(8→5)."""
    b = _B(seed)
    x0 = b.node("Relu", [b.conv("x", 3, 4)])
    t = b.node("Relu", [b.conv(x0, 4, 3)])
    x1 = b.node("Relu", [b.node("Add", [b.conv(t, 3, 4), x0])])
    t = b.node("Relu", [b.conv(x1, 4, 6, stride=2)])
    i64 = np.int64
    sl = b.node(
        "Slice",
        [
            x1,
            b.const(np.array([0, 0], i64), "s"),
            b.const(np.array([8, 8], i64), "e"),
            b.const(np.array([2, 3], i64), "a"),
            b.const(np.array([2, 2], i64), "st"),
        ],
    )
    pad = b.node("Pad", [sl, b.const(np.array([0, 2, 0, 0, 0, 2, 0, 0], i64), "p")], mode="constant")
    x2 = b.node("Relu", [b.node("Add", [b.conv(t, 6, 8), pad])])
    t = b.node("Flatten", [b.node("GlobalAveragePool", [x2])], axis=1)
    return b.model([("x", ["N", 3, 8, 8])], [b.gemm(t, 8, 5)])


def projection_block(seed: int = 0) -> onnx.ModelProto:
    """A torchvision basic block that downsamples: stem(3→4) → relu → [conv(4→6, stride 2) → relu →
    conv(6→8)] + conv1x1(4→8, stride 2, bias) → relu → GAP → gemm(8→5)."""
    b = _B(seed)
    x0 = b.node("Relu", [b.conv("x", 3, 4)])
    t = b.node("Relu", [b.conv(x0, 4, 6, stride=2)])
    short = b.conv(x0, 4, 8, k=1, pad=0, stride=2)
    t = b.node("Relu", [b.node("Add", [b.conv(t, 6, 8), short])])
    t = b.node("Flatten", [b.node("GlobalAveragePool", [t])], axis=1)
    return b.model([("x", ["N", 3, 8, 8])], [b.gemm(t, 8, 5)])


def inverted_residual(seed: int = 0, *, relu6_input: bool = False) -> onnx.ModelProto:
    """MobileNetV2 blocks: stem(3→4) [→ clip(0,6)], then twice [conv1x1(4→12) → clip(0,6) → dwconv3x3(12) →
    clip(0,6) → conv1x1(12→4)] + skip [→ clip(0,6)] (a linear bottleneck unless ``relu6_input``), GAP →
    gemm(4→5)."""
    b = _B(seed)

    def relu6(t: str) -> str:
        return b.node("Clip", [t, b.const(np.array(0, np.float32), "lo"), b.const(np.array(6, np.float32), "hi")])

    t = b.conv("x", 3, 4)
    if relu6_input:
        t = relu6(t)
    for _ in range(2):
        lo, hi = b.const(np.array(0, np.float32), "lo"), b.const(np.array(6, np.float32), "hi")
        h = b.node("Clip", [b.conv(t, 4, 12, k=1, pad=0), lo, hi])
        lo, hi = b.const(np.array(0, np.float32), "lo"), b.const(np.array(6, np.float32), "hi")
        h = b.node("Clip", [b.conv(h, 12, 12, group=12), lo, hi])
        t = b.node("Add", [b.conv(h, 12, 4, k=1, pad=0), t])
        if relu6_input:
            t = relu6(t)
    t = b.node("Flatten", [b.node("GlobalAveragePool", [t])], axis=1)
    return b.model([("x", ["N", 3, 8, 8])], [b.gemm(t, 4, 5)])


def depthwise(seed: int = 0) -> onnx.ModelProto:
    """conv(3→8) → clip(0,6) → dwconv(8) → clip(0,6) → conv(8→5, 1x1)."""
    b = _B(seed)
    lo, hi = b.const(np.array(0, np.float32), "lo"), b.const(np.array(6, np.float32), "hi")
    t = b.node("Clip", [b.conv("x", 3, 8), lo, hi])
    lo2, hi2 = b.const(np.array(0, np.float32), "lo"), b.const(np.array(6, np.float32), "hi")
    t = b.node("Clip", [b.conv(t, 8, 8, group=8), lo2, hi2])
    return b.model([("x", ["N", 3, 8, 8])], [b.conv(t, 8, 5, k=1, pad=0)])


def ffn(seed: int = 0) -> onnx.ModelProto:
    """Transformer FFN on (N, T, 6): MatMul(6→16) + b → GELU (Erf form) → MatMul(16→6) + b."""
    b = _B(seed)
    w1 = b.const((b.rng.standard_normal((6, 16)) / np.sqrt(6)).astype(np.float32))
    w2 = b.const((b.rng.standard_normal((16, 6)) / 4).astype(np.float32))
    h = b.node("Add", [b.node("MatMul", ["x", w1]), b.const((0.1 * b.rng.standard_normal(16)).astype(np.float32))])
    e = b.node("Erf", [b.node("Div", [h, b.const(np.array(np.sqrt(2), np.float32), "c")])])
    g = b.node(
        "Mul",
        [
            b.node("Mul", [h, b.node("Add", [e, b.const(np.array(1, np.float32), "c")])]),
            b.const(np.array(0.5, np.float32), "c"),
        ],
    )
    y = b.node("Add", [b.node("MatMul", [g, w2]), b.const(np.zeros(6, np.float32))])
    return b.model([("x", ["N", 4, 6])], [y])


def relu_mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul(6→16) + b → Relu → MatMul(16→5) (no bias) on (N, 6)."""
    b = _B(seed)
    w1 = b.const((b.rng.standard_normal((6, 16)) / np.sqrt(6)).astype(np.float32))
    w2 = b.const((b.rng.standard_normal((16, 5)) / 4).astype(np.float32))
    h = b.node("Relu", [b.node("Add", [b.node("MatMul", ["x", w1]), b.const(np.full(16, 0.1, np.float32))])])
    return b.model([("x", ["N", 6])], [b.node("MatMul", [h, w2])])


def concat(seed: int = 0) -> onnx.ModelProto:
    """Two convs (3→4 each) concatenated on channels (8), then conv(8→3)."""
    b = _B(seed)
    a = b.node("Relu", [b.conv("x", 3, 4)])
    c = b.node("Relu", [b.conv("x", 3, 4)])
    t = b.node("Concat", [a, c], axis=1)
    return b.model([("x", ["N", 3, 6, 6])], [b.conv(t, 8, 3)])


def squeeze_excite(seed: int = 0) -> onnx.ModelProto:
    """conv(3→8) → relu → x·sigmoid(conv(relu(conv(GAP(x), 8→4)), 4→8)) → conv(8→5)."""
    b = _B(seed)
    x = b.node("Relu", [b.conv("x", 3, 8)])
    s = b.node("Relu", [b.conv(b.node("GlobalAveragePool", [x]), 8, 4, k=1, pad=0)])
    gate = b.node("Sigmoid", [b.conv(s, 4, 8, k=1, pad=0)])
    return b.model([("x", ["N", 3, 6, 6])], [b.conv(b.node("Mul", [x, gate]), 8, 5)])


def split_slice(seed: int = 0) -> onnx.ModelProto:
    """conv(3→8) → relu → Split(4, 4) → conv(4→3) each, added; and Slice of channels 2:6 → conv(4→3)."""
    b = _B(seed)
    x = b.node("Relu", [b.conv("x", 3, 8)])
    out_a, out_b = b.name("split_"), b.name("split_")
    b.nodes.append(
        helper.make_node(
            "Split", [x, b.const(np.array([4, 4], np.int64), "sp")], [out_a, out_b], axis=1, name=b.name("Split")
        )
    )
    y = b.node("Add", [b.conv(out_a, 4, 3), b.conv(out_b, 4, 3)])
    i64 = np.int64
    sl = b.node(
        "Slice",
        [x, b.const(np.array([2], i64), "s"), b.const(np.array([6], i64), "e"), b.const(np.array([1], i64), "a")],
    )
    return b.model([("x", ["N", 3, 6, 6])], [y, b.conv(sl, 4, 3)])


def prelu_instnorm(seed: int = 0) -> onnx.ModelProto:
    """conv(3→6) → InstanceNormalization → PRelu (per-channel slopes) → conv(6→4)."""
    b = _B(seed)
    t = b.conv("x", 3, 6)
    t = b.node(
        "InstanceNormalization",
        [
            t,
            b.const((1 + 0.1 * b.rng.standard_normal(6)).astype(np.float32), "g"),
            b.const((0.1 * b.rng.standard_normal(6)).astype(np.float32), "be"),
        ],
    )
    t = b.node("PRelu", [t, b.const((0.1 + 0.2 * b.rng.random((6, 1, 1))).astype(np.float32), "slope")])
    return b.model([("x", ["N", 3, 6, 6])], [b.conv(t, 6, 4)])


def conv_transpose(seed: int = 0) -> onnx.ModelProto:
    """ConvTranspose(3→6, stride 2) → relu → ConvTranspose(6→5, k3, stride 2, pads 1, output_padding 1)
    → relu → conv(5→4): ConvTranspose as producer and as consumer."""
    b = _B(seed)
    w = b.const((b.rng.standard_normal((3, 6, 2, 2)) / 3).astype(np.float32))
    t = b.node("ConvTranspose", ["x", w, b.const(np.zeros(6, np.float32), "b")], kernel_shape=[2, 2], strides=[2, 2])
    w2 = b.const((b.rng.standard_normal((6, 5, 3, 3)) / 4).astype(np.float32))
    t = b.node(
        "ConvTranspose",
        [b.node("Relu", [t]), w2, b.const((0.1 * b.rng.standard_normal(5)).astype(np.float32), "b")],
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        output_padding=[1, 1],
    )
    return b.model([("x", ["N", 3, 4, 4])], [b.conv(b.node("Relu", [t]), 5, 4)])


def control_flow(seed: int = 0) -> onnx.ModelProto:
    """conv(3→4) → relu → t; If(cond) returns Identity(t) or Neg(t), both reading t from the outer scope."""
    b = _B(seed)
    t = b.node("Relu", [b.conv("x", 3, 4)])
    out = helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4, 6, 6])
    then_g = helper.make_graph([helper.make_node("Identity", [t], ["r"])], "then", [], [out])
    else_g = helper.make_graph([helper.make_node("Neg", [t], ["r"])], "else", [], [out])
    y = b.name("if_")
    b.nodes.append(helper.make_node("If", ["cond"], [y], then_branch=then_g, else_branch=else_g, name=b.name("If")))
    g = helper.make_graph(
        b.nodes,
        "cf",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
        b.inits,
    )
    return finish(g)


def recurrent(seed: int = 0) -> onnx.ModelProto:
    """MatMul(4→6) on (T, N, 4) → LSTM(hidden 5): the MatMul's channels reach an LSTM."""
    b = _B(seed)
    h = b.node("MatMul", ["x", b.const((b.rng.standard_normal((4, 6)) / 2).astype(np.float32))])
    w = b.const((b.rng.standard_normal((1, 20, 6)) / 3).astype(np.float32))
    r = b.const((b.rng.standard_normal((1, 20, 5)) / 3).astype(np.float32))
    y = b.name("lstm_")
    b.nodes.append(helper.make_node("LSTM", [h, w, r], [y], hidden_size=5, name=b.name("LSTM")))
    return b.model([("x", [3, "N", 4])], [y])


def reduce_mean_head(seed: int = 0, batch: object = "N") -> onnx.ModelProto:
    """conv(3→6) → relu → ReduceMean(H, W, keepdims) → Flatten → gemm(6→4) (dynamo-style global pooling)."""
    b = _B(seed)
    t = b.node("ReduceMean", [b.node("Relu", [b.conv("x", 3, 6)])], axes=[2, 3], keepdims=1)
    return b.model([("x", [batch, 3, 6, 6])], [b.gemm(b.node("Flatten", [t], axis=1), 6, 4)])


def nhwc_layout(seed: int = 0) -> onnx.ModelProto:
    """tf2onnx-style layout: conv(3→8) → Transpose(NHWC) → Mul(per-channel, last axis) → Pow(3) → Relu →
    Transpose(NCHW) → conv(8→6) → Transpose(NHWC) → ReduceMean(H, W, keepdims=0) → gemm(6→4)."""
    b = _B(seed)
    t = b.node("Transpose", [b.conv("x", 3, 8)], perm=[0, 2, 3, 1])
    t = b.node("Mul", [t, b.const((0.5 + b.rng.random(8)).astype(np.float32), "s")])
    t = b.node("Relu", [b.node("Pow", [t, b.const(np.array(3.0, dtype=np.float32), "e")])])
    t = b.node("Transpose", [b.conv(b.node("Transpose", [t], perm=[0, 3, 1, 2]), 8, 6)], perm=[0, 2, 3, 1])
    t = b.node("ReduceMean", [t], axes=[1, 2], keepdims=0)
    return b.model([("x", ["N", 3, 6, 6])], [b.gemm(t, 6, 4)])


def keras_flatten(
    seed: int = 0,
    *,
    flatten: str = "Reshape",
    dense: str = "MatMul",
    one_d: bool = False,
    shared: str = "",
    head: bool = True,
) -> onnx.ModelProto:
    """tf2onnx's Keras ``Flatten``: conv(3→6) → relu → maxpool → Transpose(channel last) → ``flatten``
    (``Reshape`` to ``[-1, 96]`` or ``Flatten``) → ``dense`` (``MatMul`` + bias ``Add``, or ``Gemm`` with
    ``transB``) (96→10) → tanh → MatMul(10→3).  ``one_d``: a 1-D conv on ``(N, 3, 32)`` (maxpool to 16).
    ``shared``: ``transpose`` (the Transpose's output is a graph output too) or ``weight`` (the dense
    weight is also added to a second output).  ``head=False``: the tanh is the output."""
    b = _B(seed)
    if one_d:
        w = (b.rng.standard_normal((6, 3, 3)) / 3).astype(np.float32)
        t = b.node(
            "Conv", ["x", b.const(w), b.const((0.1 * b.rng.standard_normal(6)).astype(np.float32), "b")], pads=[1, 1]
        )
        t = b.node("MaxPool", [b.node("Relu", [t])], kernel_shape=[2], strides=[2])
        t = b.node("Transpose", [t], perm=[0, 2, 1])
    else:
        t = b.node("MaxPool", [b.node("Relu", [b.conv("x", 3, 6)])], kernel_shape=[2, 2], strides=[2, 2])
        t = b.node("Transpose", [t], perm=[0, 2, 3, 1])
    transposed = t
    if flatten == "Reshape":
        t = b.node("Reshape", [t, b.const(np.array([-1, 96], dtype=np.int64), "shape")])
    else:
        t = b.node("Flatten", [t], axis=1)
    w = (b.rng.standard_normal((96, 10)) / np.sqrt(96)).astype(np.float32)
    bias = b.const((0.1 * b.rng.standard_normal(10)).astype(np.float32), "b")
    if dense == "Gemm":
        wname = b.const(np.ascontiguousarray(w.T))
        t = b.node("Gemm", [t, wname, bias], transB=1)
    else:
        wname = b.const(w)
        t = b.node("Add", [b.node("MatMul", [t, wname]), bias])
    t = b.node("Tanh", [t])
    w2 = (b.rng.standard_normal((10, 3)) / 3).astype(np.float32)
    outputs = [b.node("MatMul", [t, b.const(w2)])] if head else [t]
    if shared == "transpose":
        outputs.append(transposed)
    elif shared == "weight":
        outputs.append(b.node("Add", [wname, wname]))
    shape: list[object] = ["N", 3, 32] if one_d else ["N", 3, 8, 8]
    return b.model([("x", shape)], outputs)


def lone_conv(seed: int = 0) -> onnx.ModelProto:
    """conv(3→4) → relu → output: nothing to prune (its channels are the graph output)."""
    b = _B(seed)
    return b.model([("x", ["N", 3, 6, 6])], [b.node("Relu", [b.conv("x", 3, 4)])])


def inputs_for(model: onnx.ModelProto, n: int, seed: int = 0) -> np.ndarray:
    """``n`` standard-normal samples for the single input of ``model`` (symbolic dims except batch fixed)."""
    vi = model.graph.input[0]
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim][1:]
    return np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)


BUILDERS = {
    "conv_chain": conv_chain,
    "conv_bn_before": lambda seed=0: conv_chain(seed, bn="before"),
    "conv_bn_after": lambda seed=0: conv_chain(seed, bn="after"),
    "flatten_gemm": flatten_gemm,
    "reshape_gemm": lambda seed=0: flatten_gemm(seed, reshape=True),
    "residual": residual,
    "resnet_option_a": resnet_option_a,
    "depthwise": depthwise,
    "ffn": ffn,
    "concat": concat,
    "squeeze_excite": squeeze_excite,
    "split_slice": split_slice,
    "prelu_instnorm": prelu_instnorm,
    "conv_transpose": conv_transpose,
    "nhwc_layout": nhwc_layout,
    "reduce_mean_head": reduce_mean_head,
    "relu_mlp": relu_mlp,
    "keras_flatten": keras_flatten,
}


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every float32 initializer, input, output and value_info in float16."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(m, full_check=True)
    return m


def paddle_bias(seed: int = 0) -> onnx.ModelProto:
    """paddle2onnx's biases: conv (no bias) → Add(Reshape(b, [1, C, 1, 1])) → relu, twice, → conv(12→4)."""
    b = _B(seed)

    def conv_bias(x: str, cin: int, cout: int) -> str:
        shape = b.const(np.array([1, cout, 1, 1], dtype=np.int64), "shape")
        bias = b.node("Reshape", [b.const((0.1 * b.rng.standard_normal(cout)).astype(np.float32), "b"), shape])
        return b.node("Relu", [b.node("Add", [b.conv(x, cin, cout, bias=False), bias])])

    t = conv_bias(conv_bias("x", 3, 8), 8, 12)
    return b.model([("x", ["N", 3, 10, 10])], [b.conv(t, 12, 4, k=1, pad=0)])


def torch_dedup(seed: int = 0) -> onnx.ModelProto:
    """PyTorch's de-duplicated constants: conv1 and conv2 have equal biases, conv2 reads conv1's through Identity;
    BN-style per-channel Mul constants shared by two layers directly."""
    b = _B(seed)
    t1 = b.conv("x", 3, 8)
    bias1 = b.nodes[-1].input[2]
    scale = b.const((1 + 0.1 * b.rng.standard_normal((1, 8, 1, 1))).astype(np.float32), "scale")
    t = b.node("Relu", [b.node("Mul", [t1, scale])])
    w = (b.rng.standard_normal((8, 8, 3, 3)) / np.sqrt(72)).astype(np.float32)
    t2 = b.node("Conv", [t, b.const(w), b.node("Identity", [bias1])], kernel_shape=[3, 3], pads=[1] * 4)
    t = b.node("Relu", [b.node("Mul", [t2, scale])])
    return b.model([("x", ["N", 3, 10, 10])], [b.conv(t, 8, 4, k=1, pad=0)])


BUILDERS |= {"paddle_bias": paddle_bias, "torch_dedup": torch_dedup}


def upsample_neck(seed: int = 0) -> onnx.ModelProto:
    """A DB-style FPN neck: conv(3→8) → relu → ConvTranspose(8→6, stride 2, **no bias**) → relu → conv(6→4).

    The ConvTranspose is a consumer without a bias: the rewrite must give it one as its own input."""
    b = _B(seed)
    t = b.node("Relu", [b.conv("x", 3, 8)])
    w = b.const((b.rng.standard_normal((8, 6, 2, 2)) / 4).astype(np.float32))
    t = b.node("Relu", [b.node("ConvTranspose", [t, w], kernel_shape=[2, 2], strides=[2, 2])])
    return b.model([("x", ["N", 3, 5, 5])], [b.conv(t, 6, 4)])


BUILDERS |= {"upsample_neck": upsample_neck}


def c2f(seed: int = 0, *, shortcut: bool = False, num_outputs: bool = False) -> onnx.ModelProto:
    """A YOLO C2f block: conv(3→8) → SiLU → Split [4, 4] → the second half through conv(4→4) → SiLU (a bottleneck,
    with ``shortcut`` added to its input) → Concat(first half, second half, bottleneck) (12) → conv(12→8) → SiLU →
    conv(8→4).  ``num_outputs``: opset 18's ``Split(num_outputs=2)`` without sizes."""
    b = _B(seed)

    def silu(t: str) -> str:
        return b.node("Mul", [t, b.node("Sigmoid", [t])])

    t = silu(b.conv("x", 3, 8, k=1, pad=0))
    if num_outputs:
        b.nodes.append(
            helper.make_node("Split", [t], ["half_a", "half_b"], name=b.name("Split"), axis=1, num_outputs=2)
        )
    else:
        sizes = b.const(np.array([4, 4], dtype=np.int64), "split")
        b.nodes.append(helper.make_node("Split", [t, sizes], ["half_a", "half_b"], name=b.name("Split"), axis=1))
    m = silu(b.conv(silu(b.conv("half_b", 4, 4)), 4, 4))
    if shortcut:
        m = b.node("Add", ["half_b", m])
    t = b.node("Concat", ["half_a", "half_b", m], axis=1)
    t = silu(b.conv(t, 12, 8, k=1, pad=0))
    return b.model([("x", ["N", 3, 6, 6])], [b.conv(t, 8, 4, k=1, pad=0)], opset=18 if num_outputs else 0)


BUILDERS |= {
    "c2f": c2f,
    "c2f_shortcut": lambda seed=0: c2f(seed, shortcut=True),
    "c2f_opset18": lambda seed=0: c2f(seed, num_outputs=True),
}


def ffn_gelu_op(seed: int = 0) -> onnx.ModelProto:
    """MatMul(6→8) + b → Relu → MatMul(8→16) + b → Gelu (opset 20's fused op) → MatMul(16→6) + b:
    the second MatMul is a consumer whose activation is the Gelu op."""
    b = _B(seed)

    def dense(x: str, cin: int, cout: int) -> str:
        w = b.const((b.rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32))
        return b.node(
            "Add", [b.node("MatMul", [x, w]), b.const((0.1 * b.rng.standard_normal(cout)).astype(np.float32))]
        )

    h = b.node("Gelu", [dense(b.node("Relu", [dense("x", 6, 8)]), 8, 16)])
    return b.model([("x", ["N", 4, 6])], [dense(h, 16, 6)], opset=20)


BUILDERS |= {"ffn_gelu_op": ffn_gelu_op}


def grouped_conv(seed: int = 0) -> onnx.ModelProto:
    """A ResNeXt bottleneck: conv(3→8) → BN → relu → grouped conv(8→8, group=4, 2 channels per group) → BN →
    relu → conv(8→5, 1x1).  The grouped conv is pruned by whole conv groups (blocks of 2 channels)."""
    b = _B(seed)
    t = b.node("Relu", [b.bn(b.conv("x", 3, 8, bias=False), 8)])
    t = b.node("Relu", [b.bn(b.conv(t, 8, 8, group=4, bias=False), 8)])
    return b.model([("x", ["N", 3, 6, 6])], [b.conv(t, 8, 5, k=1, pad=0)])


BUILDERS |= {"grouped_conv": grouped_conv}


def channel_shuffle(seed: int = 0) -> onnx.ModelProto:
    """A ShuffleNetV2 unit: conv(3→8) → relu → Split [4, 4] → second half through conv(4→4) → relu →
    Concat(first half, branch) → channel shuffle (Reshape (N, 2, 4, H, W) → Transpose → Reshape) → conv(8→5)."""
    b = _B(seed)
    t = b.node("Relu", [b.conv("x", 3, 8)])
    sizes = b.const(np.array([4, 4], dtype=np.int64), "split")
    b.nodes.append(helper.make_node("Split", [t, sizes], ["sh_a", "sh_b"], name=b.name("Split"), axis=1))
    t = b.node("Concat", ["sh_a", b.node("Relu", [b.conv("sh_b", 4, 4, k=1, pad=0)])], axis=1)
    t = b.node("Reshape", [t, b.const(np.array([-1, 2, 4, 6, 6], np.int64), "shape")])
    t = b.node("Transpose", [t], perm=[0, 2, 1, 3, 4])
    t = b.node("Reshape", [t, b.const(np.array([-1, 8, 6, 6], np.int64), "shape")])
    return b.model([("x", ["N", 3, 6, 6])], [b.conv(t, 8, 5)])


def torchscript_shapes(seed: int = 0) -> onnx.ModelProto:
    """TorchScript's dynamic-batch shape arithmetic: conv(3→8) → relu → ``chunk(2)`` as two Slices whose bounds
    come from ``Shape → Gather → Div`` → conv(4→3) each, added → relu → 3x3 max-pool → Flatten as
    ``Reshape(x, [Shape(x)[0], -1])`` → Gemm(3·4→5)."""
    b = _B(seed)
    x = b.node("Relu", [b.conv("x", 3, 8)])
    i64 = np.int64
    c = b.node("Gather", [b.node("Shape", [x]), b.const(np.array(1, i64), "i")], axis=0)
    half = b.node("Unsqueeze", [b.node("Div", [c, b.const(np.array(2, i64), "c")]), b.const(np.array([0], i64), "ax")])
    end = b.node("Unsqueeze", [c, b.const(np.array([0], i64), "ax")])
    axis = b.const(np.array([1], i64), "ax")
    first = b.node("Slice", [x, b.const(np.array([0], i64), "s"), half, axis])
    second = b.node("Slice", [x, half, end, b.const(np.array([1], i64), "ax")])
    y = b.node("Relu", [b.node("Add", [b.conv(first, 4, 3), b.conv(second, 4, 3)])])
    y = b.node("MaxPool", [y], kernel_shape=[3, 3], strides=[3, 3])
    n = b.node(
        "Unsqueeze",
        [
            b.node("Gather", [b.node("Shape", [y]), b.const(np.array(0, i64), "i")], axis=0),
            b.const(np.array([0], i64), "ax"),
        ],
    )
    flat = b.node("Reshape", [y, b.node("Concat", [n, b.const(np.array([-1], i64), "m")], axis=0)])
    return b.model([("x", ["N", 3, 6, 6])], [b.gemm(flat, 3 * 4, 5)])


def torchscript_tokens(seed: int = 0) -> onnx.ModelProto:
    """TorchScript's shape arithmetic with a dynamic sequence length: on ``(N, T, 8)``, MatMul(8→16) → relu →
    ``chunk(2)`` of the features as two Slices with bounds ``Shape[2] / 2`` → MatMul(8→4) each, added →
    ``Reshape(y, [Shape(y)[0], Shape(y)[1] · Shape(y)[2]])`` → ``(N, 4·T)``: the Slice bounds do not depend on
    ``T``, the reshape's second entry does (its factor ``Shape(y)[2] = 4`` does not)."""
    b = _B(seed)
    i64 = np.int64

    def dim(t: str, k: int) -> str:
        return b.node("Gather", [b.node("Shape", [t]), b.const(np.array(k, i64), "i")], axis=0)

    def one(t: str) -> str:
        return b.node("Unsqueeze", [t, b.const(np.array([0], i64), "ax")])

    h = b.node("Relu", [b.node("MatMul", ["x", b.const((b.rng.standard_normal((8, 16)) / 3).astype(np.float32))])])
    c = dim(h, 2)
    half = one(b.node("Div", [c, b.const(np.array(2, i64), "c")]))
    axis = b.const(np.array([2], i64), "ax")
    first = b.node("Slice", [h, b.const(np.array([0], i64), "s"), half, axis])
    second = b.node("Slice", [h, half, one(c), b.const(np.array([2], i64), "ax")])
    wa, wb = ((b.rng.standard_normal((8, 4)) / 3).astype(np.float32) for _ in range(2))
    y = b.node("Add", [b.node("MatMul", [first, b.const(wa)]), b.node("MatMul", [second, b.const(wb)])])
    flat = b.node("Concat", [one(dim(y, 0)), one(b.node("Mul", [dim(y, 1), dim(y, 2)]))], axis=0)
    return b.model([("x", ["N", "T", 8])], [b.node("Reshape", [y, flat])])


BUILDERS |= {"channel_shuffle": channel_shuffle, "torchscript_shapes": torchscript_shapes}


def shared_split_sizes(seed: int = 0) -> onnx.ModelProto:
    """Two channel Splits reading one split-sizes constant (as TorchScript de-duplicates equal constants), with a
    nearest 2x Resize between: conv(3→8) → relu → Split [4, 4] → conv(4→4) each, added → relu → Resize ×2 →
    conv(4→8) → relu → Split [4, 4] (the same constant) → conv(4→3) each, added."""
    b = _B(seed)
    sizes = b.const(np.array([4, 4], dtype=np.int64), "split")
    t = b.node("Relu", [b.conv("x", 3, 8)])
    for k, cout in enumerate((4, 3)):
        a_, b_ = f"part{k}a", f"part{k}b"
        b.nodes.append(helper.make_node("Split", [t, sizes], [a_, b_], name=b.name("Split"), axis=1))
        t = b.node("Add", [b.conv(a_, 4, cout), b.conv(b_, 4, cout)])
        if k == 0:
            scales = b.const(np.array([1, 1, 2, 2], np.float32), "scales")
            t = b.node("Resize", [b.node("Relu", [t]), "", scales], mode="nearest")
            t = b.node("Relu", [b.conv(t, 4, 8)])
    return b.model([("x", ["N", 3, 4, 4])], [t])


BUILDERS |= {"shared_split_sizes": shared_split_sizes}


def conv1d(seed: int = 0) -> onnx.ModelProto:
    """An audio-style 1-D stack on (N, 3, 16): conv1d(3→8, k5, pad 2) → BN → relu → conv1d(8→8, k3, stride 2,
    dilation 2, pads [2, 1]) → relu → ConvTranspose1d(8→6, k2, stride 2) → relu → conv1d(6→4, k1)."""
    b = _B(seed)
    r = b.rng

    def conv(x: str, cin: int, cout: int, k: int, **attrs: object) -> str:
        w = b.const((r.standard_normal((cout, cin, k)) / np.sqrt(cin * k)).astype(np.float32))
        return b.node("Conv", [x, w, b.const((0.1 * r.standard_normal(cout)).astype(np.float32), "b")], **attrs)

    t = b.node("Relu", [b.bn(conv("x", 3, 8, 5, kernel_shape=[5], pads=[2, 2]), 8)])
    t = b.node("Relu", [conv(t, 8, 8, 3, kernel_shape=[3], strides=[2], dilations=[2], pads=[2, 1])])
    wt = b.const((r.standard_normal((8, 6, 2)) / 4).astype(np.float32))
    t = b.node("Relu", [b.node("ConvTranspose", [t, wt], kernel_shape=[2], strides=[2])])
    return b.model([("x", ["N", 3, 16])], [conv(t, 6, 4, 1, kernel_shape=[1])])


BUILDERS |= {"conv1d": conv1d}


def crnn_squeeze(seed: int = 0) -> onnx.ModelProto:
    """A CRNN-style head on (N, 3, 4, 6): conv(3→8) → relu → mean over the height (keepdims) → Squeeze → Unsqueeze
    → conv(8→6, 1x1) → relu → Squeeze(height) → Transpose to (N, W, 6) → MatMul(6→5) per step."""
    b = _B(seed)
    i64 = np.int64
    t = b.node("Relu", [b.conv("x", 3, 8)])
    t = b.node("ReduceMean", [t], axes=[2], keepdims=1)
    t = b.node("Squeeze", [t, b.const(np.array([2], i64), "ax")])
    t = b.node("Unsqueeze", [t, b.const(np.array([2], i64), "ax")])
    t = b.node("Relu", [b.conv(t, 8, 6, k=1, pad=0)])
    t = b.node("Transpose", [b.node("Squeeze", [t, b.const(np.array([-2], i64), "ax")])], perm=[0, 2, 1])
    w = b.const((b.rng.standard_normal((6, 5)) / np.sqrt(6)).astype(np.float32))
    return b.model([("x", ["N", 3, 4, 6])], [b.node("MatMul", [t, w])])


BUILDERS |= {"crnn_squeeze": crnn_squeeze}


def contrib_op(seed: int = 0) -> onnx.ModelProto:
    """conv(3→8) → com.microsoft Gelu (an onnxruntime contrib op: ONNX shape inference knows nothing of its output)
    → 3x3 max-pool → Flatten → Gemm(8·4→5).  The flatten's size is only known from a run."""
    b = _B(seed)
    t = b.conv("x", 3, 8)
    out = b.name("gelu_")
    b.nodes.append(helper.make_node("Gelu", [t], [out], name=b.name("Gelu"), domain="com.microsoft"))
    t = b.node("Flatten", [b.node("MaxPool", [out], kernel_shape=[3, 3], strides=[3, 3])], axis=1)
    g = helper.make_graph(
        b.nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info(b.gemm(t, 8 * 4, 5), TensorProto.FLOAT, ["N", 5])],
        b.inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def keras_se(seed: int = 0) -> onnx.ModelProto:
    """tf2onnx's squeeze-excite: conv(3→8) → relu → GAP → Reshape to (N, 8) → Reshape to (N, 8, 1, 1) →
    conv(8→4, 1x1) → relu → conv(4→8, 1x1) → sigmoid → Mul with the block → conv(8→5)."""
    b = _B(seed)
    i64 = np.int64
    x = b.node("Relu", [b.conv("x", 3, 8)])
    s = b.node("Reshape", [b.node("GlobalAveragePool", [x]), b.const(np.array([-1, 8], i64), "shape")])
    s = b.node("Reshape", [s, b.const(np.array([-1, 8, 1, 1], i64), "shape")])
    s = b.node("Relu", [b.conv(s, 8, 4, k=1, pad=0)])
    gate = b.node("Sigmoid", [b.conv(s, 4, 8, k=1, pad=0)])
    return b.model([("x", ["N", 3, 6, 6])], [b.conv(b.node("Mul", [x, gate]), 8, 5)])


BUILDERS |= {"keras_se": keras_se}


def attention(
    seed: int = 0,
    *,
    style: str = "const",
    heads: int = 4,
    size: int = 4,
    dead: int | None = None,
    kv_heads: int | None = None,
) -> onnx.ModelProto:
    """One encoder attention block on ``x: (N, T, E)`` (``E = heads·size``, ``T`` symbolic) with an
    ``attention_mask: (N, T)`` input, as exporters write it::

        q, k, v = x·W + b → Reshape (N, T, H, d) → Transpose → q·kᵀ ÷ √d + (1 − mask)·(−1e4) → Softmax
        → ·v → Transpose → Reshape (N, T, E) → ·Wo + bo → + x → LayerNormalization

    ``style``: ``const`` (shape constants ``[0, 0, H, d]`` / ``[0, 0, E]``), ``computed`` (TorchScript's
    ``Concat`` of ``Shape``-gathered dims and one constant per piece), ``channel_read`` (the merge's
    ``H·d`` computed from the context's shape: the head count read at run time), ``rotary`` (const
    shapes, and q and k rotated as Llama does: halves of the head size sliced, negated, concatenated
    along it and mixed by per-position factors).  ``dead``: a (key/value) head
    whose value weights and bias are zero (its context is 0: removing it changes nothing).
    ``kv_heads``: grouped-query attention, ``kv_heads`` key/value heads each repeated for
    ``heads / kv_heads`` query heads as Hugging Face's ``repeat_kv`` exports (dynamo)::

        k (N, G, T, d) → Unsqueeze(2) → Expand(Concat[N, G, r, T, d], shared by k and v) → Reshape [0, H, -1, d]
    """
    b = _B(seed)
    e = heads * size
    r = b.rng
    kvh = kv_heads or heads

    def proj(x: str, zero: int | None = None, out: int = e) -> str:
        w = (r.standard_normal((e, out)) / np.sqrt(e)).astype(np.float32)
        bias = (0.1 * r.standard_normal(out)).astype(np.float32)
        if zero is not None:
            w[:, zero * size : (zero + 1) * size] = 0
            bias[zero * size : (zero + 1) * size] = 0
        return b.node("Add", [b.const(bias, "b"), b.node("MatMul", [x, b.const(w)])])

    def ints(values: list[int]) -> str:
        return b.const(np.array(values, np.int64), "s")

    def dim(t: str, i: int) -> str:
        return b.node(
            "Unsqueeze", [b.node("Gather", [b.node("Shape", [t]), b.const(np.array(i, np.int64), "i")]), ints([0])]
        )

    def split(t: str, h: int = heads) -> str:
        if style in ("const", "rotary"):
            shape = ints([0, 0, h, size])
        else:
            shape = b.node("Concat", [dim("x", 0), ints([-1]), ints([h]), ints([size])], axis=0)
        return b.node("Reshape", [t, shape])

    expand = ""

    def repeat(t: str) -> str:  # (N, G, T, d) → (N, H, T, d), key/value head j for query heads j·r … j·r + r - 1
        nonlocal expand
        if kv_heads is None:
            return t
        if not expand:
            pieces = [dim("x", 0), ints([kvh]), ints([heads // kvh]), dim("x", 1), ints([size])]
            expand = b.node("Concat", pieces, axis=0)
        wide = b.node("Expand", [b.node("Unsqueeze", [t, ints([2])]), expand])
        return b.node("Reshape", [wide, ints([0, heads, -1, size])])

    def rotary(t: str) -> str:  # t · cos + rotate_half(t) · sin over the head size (last axis)
        half = size // 2
        lo = b.node("Slice", [t, ints([0]), ints([half]), ints([3])])
        hi = b.node("Slice", [t, ints([half]), ints([size]), ints([3])])
        rot = b.node("Concat", [b.node("Neg", [hi]), lo], axis=3)
        angle = np.linspace(0.1, 1.0, size, dtype=np.float32).reshape(1, 1, 1, size)
        cos, sin = b.const(np.cos(angle), "c"), b.const(np.sin(angle), "c")
        return b.node("Add", [b.node("Mul", [t, cos]), b.node("Mul", [rot, sin])])

    q = b.node("Transpose", [split(proj("x"))], perm=[0, 2, 1, 3])
    k = b.node("Transpose", [split(proj("x", out=kvh * size), kvh)], perm=[0, 2, 1, 3])
    if style == "rotary":
        q = rotary(q)
        k = rotary(k)
    k = b.node("Transpose", [repeat(k)], perm=[0, 1, 3, 2])
    v = repeat(b.node("Transpose", [split(proj("x", dead, out=kvh * size), kvh)], perm=[0, 2, 1, 3]))
    scores = b.node("Div", [b.node("MatMul", [q, k]), b.const(np.array(np.sqrt(size), np.float32), "c")])
    m = b.node("Cast", [b.node("Unsqueeze", ["attention_mask", ints([1, 2])])], to=TensorProto.FLOAT)
    m = b.node("Mul", [b.node("Sub", [b.const(np.array(1, np.float32), "c"), m]), b.const(np.array(-1e4, np.float32))])
    p = b.node("Softmax", [b.node("Add", [scores, m])], axis=-1)
    ctx = b.node("Transpose", [b.node("MatMul", [p, v])], perm=[0, 2, 1, 3])
    if style in ("const", "rotary"):
        shape = ints([0, 0, e])
    elif style == "computed":
        shape = b.node("Concat", [dim(ctx, 0), dim(ctx, 1), ints([e])], axis=0)
    else:
        hd = b.node("Mul", [dim(ctx, 2), dim(ctx, 3)])
        shape = b.node("Concat", [dim(ctx, 0), dim(ctx, 1), hd], axis=0)
    out = proj(b.node("Reshape", [ctx, shape]))
    gamma, beta = b.const((1 + 0.1 * r.standard_normal(e)).astype(np.float32)), b.const(np.zeros(e, np.float32))
    y = b.node("LayerNormalization", [b.node("Add", [out, "x"]), gamma, beta], axis=-1)
    g = helper.make_graph(
        b.nodes,
        "attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", e]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "T"]),
        ],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
        b.inits,
    )
    return finish(g)


def attention_inputs(n: int, tokens: int, seed: int = 0, e: int = 16) -> dict[str, np.ndarray]:
    """Inputs for :func:`attention`: normal ``x`` and masks with 1-``tokens`` valid tokens each."""
    rng = np.random.default_rng(seed)
    valid = rng.integers(1, tokens + 1, n)
    return {
        "x": rng.standard_normal((n, tokens, e)).astype(np.float32),
        "attention_mask": (np.arange(tokens)[None, :] < valid[:, None]).astype(np.int64),
    }
