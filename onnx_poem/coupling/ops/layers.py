"""The layers: ``Conv``, ``ConvTranspose``, ``Gemm`` and ``MatMul`` with a constant weight.

* As **producers** (:func:`producer`) their output channels start a group: the weight's output rows (and
  the bias) are sliced with them.  Grouped and depthwise convs are not producers: their channels are their
  input's, carried through (:class:`Grouped`, whose ``group`` attribute the rewrite sets).
* As **consumers** they read the channels as input columns and are reconstructed
  (:class:`~onnx_poem.coupling.groups.Consumer`: the conv's geometry, a MatMul's bias ``Add``, and what
  follows the output: BatchNormalization, a residual ``Add``, the activation of
  :mod:`.activations` that POEM minimises the error after).
* Layers of quantized models are named as such and left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx

from ...graph import GraphView
from ..edits import Phase
from ..flow import (
    Consume,
    Edge,
    OpKind,
    Produced,
    Step,
    Stop,
    Through,
    out_edge,
    register,
    single_user,
)
from ..groups import ChannelGroup, Consumer, Index, ParamSlice, Unprunable
from .activations import activation_of

if TYPE_CHECKING:
    from ..edits import Rewrite

#: layers of quantized models (QOperator format), reported with :data:`QUANTIZED_HINT`
QUANTIZED_LAYERS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat")
QUANTIZED_HINT = "quantized models are not pruned; prune the float model, then quantize it"


@dataclass(frozen=True)
class Grouped:
    """A grouped conv carried by the group: depthwise (``group`` equals its channel count,
    ``per_group = 1``) or with ``per_group`` input channels per conv group (ResNeXt, RegNet),
    pruned by whole conv groups.  Its ``group`` attribute becomes kept channels / ``per_group``."""

    node: int
    index: tuple[int, ...] | None = None
    per_group: int = 1

    per_position: ClassVar[bool] = True

    def placed(self, index: Index, unit: int) -> Grouped:
        return replace(self, index=index)

    def constants(self, view: GraphView) -> Iterable[str]:
        return ()

    def apply(self, rw: Rewrite, g: ChannelGroup, keep: np.ndarray) -> None:
        groups = len(g.positions(self.index, keep)) // self.per_group

        def edit(model: onnx.ModelProto) -> Iterable[str]:
            for a in model.graph.node[self.node].attribute:
                if a.name == "group":
                    a.i = groups
            return ()

        rw.later(Phase.ATTRIBUTE, edit)


def _own_weight(view: GraphView, node: int, slot: int) -> np.ndarray | Stop:
    """A conv's weight as a consumer: a constant of its own, the channels on its data input."""
    n = view.nodes[node]
    if slot != 0:
        return Stop(f"channels reach a {n.op_type} weight")
    w = view.const(n.input[1])
    if w is None or view.const_users(n.input[1]) != 1:
        return Stop(f"{n.op_type} with computed or shared weights")
    return w


def _conv_transpose(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    w = _own_weight(view, node, slot)
    if isinstance(w, Stop):
        return w
    if w.ndim not in (3, 4) or edge.cols != 1 or (edge.rank is not None and edge.axis % edge.rank != 1):
        return Stop("ConvTranspose other than 1-D or 2-D over the channel axis")
    if int(view.attr(node, "group", 1)) != 1:
        return Stop("grouped ConvTranspose as a consumer is not supported yet")
    if view.attr(node, "output_shape") is not None or _auto_pad(view, node) not in ("NOTSET", ""):
        return Stop("ConvTranspose with output_shape or auto_pad (implicit pads) as a consumer")
    if w.shape[0] != channels:
        return Stop(f"ConvTranspose expects {w.shape[0]} input channels, group has {channels}")
    return Consume(conv_consumer(view, node, kind="convt"))


def _conv(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    w = _own_weight(view, node, slot)
    if isinstance(w, Stop):
        return w
    if w.ndim not in (3, 4) or edge.cols != 1:
        return Stop(f"{w.ndim - 2}-D Conv (1-D and 2-D are supported)")
    if edge.rank is not None and edge.axis % edge.rank != 1:
        return Stop("Conv over a tensor whose channel axis is not 1")
    group = int(view.attr(node, "group", 1))
    if group == 1:
        if w.shape[1] != channels:
            return Stop(f"Conv expects {w.shape[1]} input channels, group has {channels}")
        return Consume(conv_consumer(view, node))
    if w.shape[1] * group != channels:
        return Stop(f"grouped Conv expects {w.shape[1] * group} input channels, group has {channels}")
    if w.shape[0] != channels:  # the output blocks would differ in size from the input blocks
        return Stop(f"grouped Conv (group={group}) with {w.shape[0]} outputs for {channels} inputs")
    params = [ParamSlice(n.input[1], 0)]
    if len(n.input) > 2 and n.input[2]:
        params.append(ParamSlice(n.input[2], 0))
    # depthwise (one channel per conv group) or ResNeXt-style: pruned by whole conv groups
    per_group = channels // group
    return Through((out_edge(view, node, edge),), tuple(params), (Grouped(node, per_group=per_group),), block=per_group)


def _gemm(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    if slot != 0 or int(view.attr(node, "transA", 0)):
        return Stop("channels reach a Gemm operand other than A")
    b = view.const(n.input[1])
    if b is None or b.ndim != 2 or view.const_users(n.input[1]) != 1:
        return Stop("Gemm with computed or shared weights")
    if edge.rank is not None and edge.axis % edge.rank != 1:
        return Stop("Gemm over an axis other than the feature axis")
    trans_b = bool(view.attr(node, "transB", 0))
    k = b.shape[1] if trans_b else b.shape[0]
    if k != channels * edge.cols:
        return Stop(f"Gemm expects {k} inputs, group gives {channels}×{edge.cols}")
    return Consume(dense_consumer(view, node, "gemm"))


def _matmul(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    b = view.const(n.input[1])
    if slot != 0 or b is None or b.ndim != 2 or view.const_users(n.input[1]) != 1:
        return Stop("MatMul whose B is not a constant matrix")
    if edge.rank is not None and edge.axis % edge.rank != edge.rank - 1:
        return Stop("MatMul over an axis other than the channel axis")
    if b.shape[0] != channels * edge.cols:
        return Stop(f"MatMul expects {b.shape[0]} inputs, group gives {channels}×{edge.cols}")
    return Consume(dense_consumer(view, node, "matmul"))


def _post(view: GraphView, out: str) -> dict[str, object]:
    """Follow a consumer's output through BN, a residual Add and an activation.

    The Add's other input is the consumer's ``offset`` (its reconstruction target is the Add's output, see
    :func:`onnx_poem.calibration.collect.compensated`) when an activation follows it, or, without one, in a
    linear residual sum (:func:`_linear_residual`: MobileNetV2/EfficientNet blocks)."""
    post: dict[str, object] = {"output": out}
    nxt = single_user(view, out)
    if nxt is not None and view.nodes[nxt[0]].op_type == "BatchNormalization" and nxt[1] == 0:
        bn = nxt[0]
        if all(view.is_const(t) and view.const_users(t) == 1 for t in view.nodes[bn].input[1:5]):
            post["bn"] = bn
            out = view.nodes[bn].output[0]
            post["output"] = out
            nxt = single_user(view, out)
    cur = out
    if nxt is not None and view.nodes[nxt[0]].op_type == "Add":
        other = view.nodes[nxt[0]].input[1 - nxt[1]]
        if not view.is_const(other):
            post["offset"] = other
            cur = view.nodes[nxt[0]].output[0]
            nxt = single_user(view, cur)
    if nxt is not None and nxt[1] == 0 and (act := activation_of(view, nxt[0])) is not None:
        post["activation"] = act
        post["act_out"] = view.nodes[nxt[0]].output[0]
    elif "offset" in post and not _linear_residual(view, out, str(post["offset"]), cur):
        del post["offset"]
    return post


#: ops that normalise what they read (a residual sum they read is not fitted with its shortcut, see _post);
#: ``ReduceMean`` is a decomposed LayerNorm's first step (a global pooling right after a sum goes with it)
NORMALISATIONS = frozenset(
    {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "GroupNormalization", "ReduceMean"}
)


def _linear_residual(view: GraphView, out: str, other: str, total: str) -> bool:
    """Whether ``total = out + other`` (no activation after it) is a residual sum whose shortcut ``other`` is a
    consumer's offset: ``other`` has ``out``'s known shape and no normalisation reads ``total``.

    [R, measured; benchmarks/compensation.md] Fitting the sum helps inverted residuals (EfficientNet-Lite0
    +1.3 points at 0.70 of the MACs) but cost post-LN MiniLM 0.25 points at 0.50 (three seeds, each lower),
    where a LayerNorm reads the sum at once; transformers keep fitting the branch's own output."""
    sa, sb = view.shapes.get(out), view.shapes.get(other)
    if sa is None or sa != sb:
        return False
    return not any(view.nodes[u.node].op_type in NORMALISATIONS for u in view.users(total))


def _auto_pad(view: GraphView, node: int) -> str:
    auto_pad = view.attr(node, "auto_pad", b"NOTSET")
    return auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)


def conv_consumer(view: GraphView, node: int, kind: str = "conv") -> Consumer:
    """Describe Conv (or, with ``kind="convt"``, ConvTranspose) ``node`` (group 1) as a :class:`Consumer`.

    A 1-D conv (audio, TCNs) is described as the 2-D conv it equals over an input of height 1:
    kernel ``(1, k)``, stride ``(1, s)``, pads ``(0, p_begin, 0, p_end)``, dilation ``(1, d)``.
    """
    n = view.nodes[node]
    w = view.const(n.input[1])
    assert w is not None  # checked by the rule
    one_d = w.ndim == 3

    def geometry(name: str, default: int) -> tuple[int, ...]:
        values = [int(v) for v in view.attr(node, name, [default] * 2)]
        if not one_d:
            return tuple(values)
        if name == "pads":  # 1-D: [begin, end]
            return (0, values[0], 0, values[1]) if values else (0, 0, 0, 0)
        return (1 if name != "output_padding" else 0, values[0]) if values else (default, default)

    k = tuple(int(d) for d in w.shape[2:])
    k = (1, *k) if one_d else k
    pads = geometry("pads", 0) if view.attr(node, "pads") is not None else (0, 0, 0, 0)
    post = _post(view, n.output[0])
    return Consumer(
        node=node,
        label=view.node_label(node),
        kind=kind,
        weight=n.input[1],
        bias=n.input[2] if len(n.input) > 2 and n.input[2] else None,
        input=n.input[0],
        kernel=k,
        strides=geometry("strides", 1),
        pads=pads,
        dilations=geometry("dilations", 1),
        auto_pad=_auto_pad(view, node),
        output_padding=geometry("output_padding", 0) if kind == "convt" else (),
        **post,  # type: ignore[arg-type]
    )


def dense_consumer(view: GraphView, node: int, kind: str) -> Consumer:
    """Describe Gemm / MatMul ``node`` as a :class:`Consumer` (its columns per channel follow from its weight)."""
    n = view.nodes[node]
    bias: str | None = None
    bias_add: int | None = None
    out = n.output[0]
    if kind == "gemm":
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
    else:
        nxt = single_user(view, out)
        if nxt is not None and view.nodes[nxt[0]].op_type == "Add":
            other = view.nodes[nxt[0]].input[1 - nxt[1]]
            v = view.const(other)
            b = view.const(n.input[1])
            if v is not None and b is not None and v.size == b.shape[1] and view.const_users(other) == 1:
                bias, bias_add, out = other, nxt[0], view.nodes[nxt[0]].output[0]
    post = _post(view, out)
    return Consumer(
        node=node,
        label=view.node_label(node),
        kind=kind,
        weight=n.input[1],
        bias=bias,
        input=n.input[0],
        alpha=float(view.attr(node, "alpha", 1.0)) if kind == "gemm" else 1.0,
        beta=float(view.attr(node, "beta", 1.0)) if kind == "gemm" else 1.0,
        trans_b=bool(view.attr(node, "transB", 0)) if kind == "gemm" else False,
        bias_add=bias_add,
        **post,  # type: ignore[arg-type]
    )


def producer(view: GraphView, i: int) -> Produced | Unprunable | None:
    """Channels, sliced constants and output edge of layer ``i`` as a producer (``None``: not a layer)."""
    n = view.nodes[i]
    label = view.node_label(i)
    w = view.const(n.input[1]) if len(n.input) > 1 else None
    if w is None:
        source = view.producer.get(n.input[1]) if len(n.input) > 1 else None
        if source is not None and view.nodes[source].op_type == "DequantizeLinear":
            return Unprunable(label, f"weight dequantized at run time (QDQ quantized model): {QUANTIZED_HINT}")
        if n.op_type in ("Conv", "ConvTranspose"):
            return Unprunable(label, "weight computed at run time, not a constant")
        return None  # activation x activation products (attention) are not layers
    if view.const_users(n.input[1]) != 1:
        return Unprunable(label, "weight shared by several nodes")
    out = n.output[0]
    shape = view.shapes.get(out)
    rank = len(shape) if shape is not None else None
    if n.op_type == "ConvTranspose":  # W: (C_in, C_out / group, kh, kw)
        if int(view.attr(i, "group", 1)) != 1:
            return Unprunable(label, "grouped ConvTranspose is not supported yet")
        params = [ParamSlice(n.input[1], 1)]
        if len(n.input) > 2 and n.input[2]:
            params.append(ParamSlice(n.input[2], 0))
        return Produced(int(w.shape[1]), tuple(params), Edge(out, 1, rank or w.ndim))
    if n.op_type == "Conv":
        group = int(view.attr(i, "group", 1))
        if group != 1:
            return None  # depthwise or grouped: carried by the group of its input (_conv)
        params = [ParamSlice(n.input[1], 0)]
        if len(n.input) > 2 and n.input[2]:
            params.append(ParamSlice(n.input[2], 0))
        return Produced(int(w.shape[0]), tuple(params), Edge(out, 1, rank or w.ndim))
    if w.ndim != 2:
        return Unprunable(label, f"{n.op_type} with a {w.ndim}-D weight")
    if n.op_type == "Gemm":
        trans_b = bool(view.attr(i, "transB", 0))
        channels = int(w.shape[0] if trans_b else w.shape[1])
        params = [ParamSlice(n.input[1], 0 if trans_b else 1)]
        if len(n.input) > 2 and n.input[2]:
            c = view.const(n.input[2])
            if c is None:
                return Unprunable(label, "Gemm with a computed bias")
            if c.size == channels and view.const_users(n.input[2]) != 1:
                return Unprunable(label, "Gemm bias shared by several nodes")
            if c.size == channels:
                params.append(ParamSlice(n.input[2], c.ndim - 1))
            elif c.size != 1:
                return Unprunable(label, f"Gemm bias of shape {c.shape} is not per-channel")
        return Produced(channels, tuple(params), Edge(out, 1, 2))
    return Produced(int(w.shape[1]), (ParamSlice(n.input[1], 1),), Edge(out, (rank or 2) - 1, rank))


def _quantized(view: GraphView, i: int) -> Unprunable:
    return Unprunable(view.node_label(i), f"quantized layer ({view.nodes[i].op_type}): {QUANTIZED_HINT}")


register(
    OpKind(
        "conv",
        ("Conv",),
        flow=_conv,
        producer=producer,
        doc="a layer: its output channels start a group, reconstructed where it reads one; "
        "grouped and depthwise convs carried, group rewritten",
    )
)
register(
    OpKind(
        "conv transpose",
        ("ConvTranspose",),
        flow=_conv_transpose,
        producer=producer,
        doc="a layer: its output channels start a group, reconstructed (as the equivalent conv) where it reads one",
    )
)
register(
    OpKind(
        "gemm",
        ("Gemm",),
        flow=_gemm,
        producer=producer,
        doc="a dense layer: its output features start a group, reconstructed where it reads one",
    )
)
register(
    OpKind(
        "matmul",
        ("MatMul",),
        flow=_matmul,
        producer=producer,
        doc="a dense layer with a constant weight: its output features start a group, reconstructed where it reads one",
    )
)
register(
    OpKind(
        "quantized layer",
        QUANTIZED_LAYERS,
        producer=_quantized,
        doc="left unpruned: prune the float model, then quantize it",
    )
)
