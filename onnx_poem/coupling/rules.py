"""Per-op coupling rules, registered by op type.

A rule is called when the channels of a group reach an input slot of a node.
It answers with one of:

* :class:`Through` - the channels pass to the node's output(s) unchanged in
  order (elementwise ops, BatchNormalization, pooling, depthwise conv,
  flatten), listing the constants to slice;
* :class:`Consume` - the node is a layer that reads the channels as input
  columns and can be reconstructed (Conv with ``group == 1``, Gemm, MatMul);
* :class:`Stop` - anything else; the whole group is left unpruned with the reason.

Op types without a rule stop the group ("not supported").  The defaults are
listed in :data:`UNARY_ELEMENTWISE` and the ``@coupling_rule`` registrations below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..graph import GraphView
from .groups import Activation, Consumer, ParamSlice, ReshapeFix


@dataclass(frozen=True)
class Edge:
    """Where the channels are: ``tensor``'s ``axis`` (of ``rank`` dims), ``cols`` entries per channel.

    ``per > 1``: one entry of ``axis`` holds ``per`` channels, which run along the last axis (attention
    heads: ``(N, T, H, d)`` after ``(N, T, H·d)`` is split into heads, ``per = d``; the group's atoms are
    then whole heads, see :mod:`onnx_poem.coupling.attention`).  Only the rules of :data:`PER_AWARE` ops
    keep ``per``; any other op stops such a group.
    """

    tensor: str
    axis: int
    rank: int | None
    cols: int = 1
    per: int = 1

    def aligned(self, rank: int) -> int:
        """The channel axis in a tensor of ``rank`` dims broadcast against this one (axes aligned from the
        right; negative: the tensor has no such axis).  Needs a known :attr:`rank`."""
        assert self.rank is not None
        return self.axis % self.rank - self.rank + rank


@dataclass(frozen=True)
class Through:
    outputs: tuple[Edge, ...]
    params: tuple[ParamSlice, ...] = ()
    reshape: ReshapeFix | None = None
    grouped: int | None = None
    per_group: int = 1  # input channels per conv group of ``grouped`` (1: depthwise)
    heads: int = 1  # channels per attention head when the node splits the channels into heads (else 1)


@dataclass(frozen=True)
class Consume:
    consumer: Consumer


@dataclass(frozen=True)
class Stop:
    reason: str


Step = Through | Consume | Stop
Rule = Callable[[GraphView, int, int, Edge, int], Step]

RULES: dict[str, Rule] = {}

#: Ops that act elementwise on their first input and keep its shape.
UNARY_ELEMENTWISE = (
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Softsign",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Mish",
    "Erf",
    "Identity",
    "Cast",
    "Dropout",
    "Neg",
    "Abs",
    "Exp",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "ThresholdedRelu",
)

#: Ops whose rules carry an edge's ``per`` (attention heads) through unchanged; every other op stops a group
#: whose channels reach it as heads.
PER_AWARE = (
    *UNARY_ELEMENTWISE,
    "Clip",
    "Pow",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Reshape",
    "Softmax",
    "LogSoftmax",
    "Shape",
)

POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")


def coupling_rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the coupling rule of ``ops``."""

    def deco(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return deco


def _out_edge(view: GraphView, node: int, edge: Edge, index: int = 0) -> Edge:
    out = view.nodes[node].output[index]
    return Edge(out, edge.axis, edge.rank, edge.cols, edge.per)


def _const_per_channel(view: GraphView, name: str, edge: Edge, channels: int) -> ParamSlice | str | None:
    """Classify constant ``name`` broadcast against the channel tensor.

    Returns ``None`` for a channel-independent constant (all broadcast dims 1),
    a :class:`ParamSlice` for one vector along the channel axis, or a reason string.
    """
    v = view.const(name)
    if v is None:
        return "operand is not a constant"
    if v.size == 1:
        return None
    if edge.rank is not None and v.ndim <= edge.rank:
        at = edge.aligned(v.ndim)  # the constant's axis against the channel axis
        if at < 0 or v.shape[at] == 1:
            return None  # broadcast along the channels (a rotary embedding's per-position factors on heads)
    if edge.per != 1:
        return "per-channel constant on attention heads"
    if edge.cols != 1 or edge.rank is None:
        return "per-channel constant after a flatten"
    axis = edge.axis % edge.rank
    lead = edge.rank - v.ndim
    if lead < 0:
        return "constant has more dimensions than the tensor"
    v_axis = axis - lead
    shape = list(v.shape)
    if v_axis < 0 or shape[v_axis] != channels or any(d != 1 for i, d in enumerate(shape) if i != v_axis):
        return f"constant of shape {tuple(v.shape)} is not per-channel"
    if view.const_users(name) != 1:
        return f"constant {name} is shared by several nodes"
    return ParamSlice(name, v_axis)


@coupling_rule(*UNARY_ELEMENTWISE)
def _unary(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0:
        return Stop("channels reach a non-data input")
    return Through((_out_edge(view, node, edge),))


@coupling_rule("Clip")
def _clip(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0:
        return Stop("channels reach a Clip bound")
    for name in view.nodes[node].input[1:]:
        if name and (v := view.const(name)) is not None and v.size != 1:
            return Stop("Clip with non-scalar bounds")
        if name and not view.is_const(name):
            return Stop("Clip with computed bounds")
    return Through((_out_edge(view, node, edge),))


@coupling_rule("PRelu")
def _prelu(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0:
        return Stop("channels reach a PRelu slope")
    p = _const_per_channel(view, view.nodes[node].input[1], edge, channels)
    if isinstance(p, str):
        return Stop(f"PRelu: {p}")
    return Through((_out_edge(view, node, edge),), (p,) if p is not None else ())


@coupling_rule("InstanceNormalization")
def _instancenorm(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0 or edge.cols != 1 or edge.axis % (edge.rank or 2) != 1:
        return Stop("InstanceNormalization not on the channel axis")
    names = view.nodes[node].input[1:3]
    if not all(view.is_const(t) and view.const_users(t) == 1 for t in names):
        return Stop("InstanceNormalization with non-constant or shared parameters")
    return Through((_out_edge(view, node, edge),), tuple(ParamSlice(t, 0) for t in names))


@coupling_rule("BatchNormalization")
def _batchnorm(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0 or edge.cols != 1 or edge.axis % (edge.rank or 2) != 1:
        return Stop("BatchNormalization not on the channel axis")
    params = []
    for name in view.nodes[node].input[1:5]:
        if not view.is_const(name) or view.const_users(name) != 1:
            return Stop("BatchNormalization with non-constant or shared parameters")
        params.append(ParamSlice(name, 0))
    return Through((_out_edge(view, node, edge),), tuple(params))


@coupling_rule("Add", "Sub", "Mul", "Div")
def _binary(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    other = n.input[1 - slot]
    if not view.is_const(other):
        return Stop(f"{n.op_type} with another computed tensor (residual or gate; not pruned yet)")
    if n.op_type == "Div" and slot == 1:
        return Stop("channels are a divisor")
    p = _const_per_channel(view, other, edge, channels)
    if isinstance(p, str):
        return Stop(f"{n.op_type}: {p}")
    return Through((_out_edge(view, node, edge),), (p,) if p is not None else ())


@coupling_rule("Slice")
def _slice(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    if slot != 0 or edge.rank is None:
        return Stop("channels reach a Slice parameter")
    starts = view.const(n.input[1])
    axes = view.const(n.input[3]) if len(n.input) > 3 and n.input[3] else None
    if starts is None or (len(n.input) > 3 and n.input[3] and axes is None):
        return Stop("Slice with computed parameters")
    sliced = {int(a) % edge.rank for a in (axes if axes is not None else range(starts.size))}
    if edge.axis % edge.rank in sliced:
        return Stop("Slice on the channel axis is not supported yet")
    return Through((_out_edge(view, node, edge),))


@coupling_rule("Pad")
def _pad(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    # channel pads are handled by the tracer; this is a Pad of the other axes
    return Through((_out_edge(view, node, edge),)) if slot == 0 else Stop("channels reach a Pad parameter")


@coupling_rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1")
def _reduce(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """Reductions over axes other than the channel axis (``keepdims=1``), e.g. global pooling."""
    n = view.nodes[node]
    if slot != 0 or edge.rank is None or edge.cols != 1:
        return Stop("channels reach a reduction parameter")
    axes = view.attr(node, "axes")
    if axes is None and len(n.input) > 1 and n.input[1]:
        value = view.const(n.input[1])
        if value is None:
            return Stop("reduction over computed axes")
        axes = [int(a) for a in np.reshape(value, -1)]
    if not axes:
        return Stop("reduction over all axes")
    reduced = {int(a) % edge.rank for a in axes}
    ax = edge.axis % edge.rank
    if ax in reduced:
        return Stop("reduction over the channel axis")
    if not int(view.attr(node, "keepdims", 1)):  # the channel axis moves left by the reduced axes before it
        return Through((Edge(n.output[0], ax - sum(a < ax for a in reduced), edge.rank - len(reduced)),))
    return Through((_out_edge(view, node, edge),))


def _axes(view: GraphView, node: int) -> list[int] | None:
    """Constant ``axes`` of a Squeeze/Unsqueeze (attribute before opset 13, input after); ``None`` if computed."""
    axes = view.attr(node, "axes")
    n = view.nodes[node]
    if axes is None and len(n.input) > 1 and n.input[1]:
        value = view.const(n.input[1])
        if value is None:
            return None
        axes = np.reshape(value, -1).tolist()
    return [int(a) for a in axes] if axes is not None else []


@coupling_rule("Squeeze", "Unsqueeze")
def _squeeze(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """Removing or inserting unit axes other than the channel axis (a CRNN squeezes the height away)."""
    axes = _axes(view, node)
    if slot != 0 or edge.rank is None or edge.cols != 1 or not axes:
        return Stop(f"{view.nodes[node].op_type} with computed or implicit axes")
    ax = edge.axis % edge.rank
    if view.nodes[node].op_type == "Squeeze":
        gone = {a % edge.rank for a in axes}
        if ax in gone:
            return Stop("Squeeze of the channel axis")
        out = Edge(view.nodes[node].output[0], ax - sum(a < ax for a in gone), edge.rank - len(gone), per=edge.per)
        return Through((out,))
    rank = edge.rank + len(axes)
    new = sorted(a % rank for a in axes)
    kept = [a for a in range(rank) if a not in new]  # output axes holding the input's axes, in order
    return Through((Edge(view.nodes[node].output[0], kept[ax], rank, per=edge.per),))


@coupling_rule("Pow")
def _pow(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """``x ** c`` with a constant scalar exponent is elementwise (tanh-approximated GELU uses ``x³``)."""
    e = view.const(view.nodes[node].input[1])
    if slot != 0 or e is None or e.size != 1:
        return Stop("Pow with a computed or per-element exponent")
    return Through((_out_edge(view, node, edge),))


@coupling_rule(*POOLS)
def _pool(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if edge.cols != 1 or edge.rank is None or edge.axis % edge.rank != 1:
        return Stop("pooling over a tensor whose channel axis is not 1")
    return Through((_out_edge(view, node, edge),))


def _spatial(view: GraphView, edge: Edge) -> int | None:
    shape = view.shapes.get(edge.tensor)
    if shape is None or len(shape) < 2 or edge.axis % len(shape) != 1:
        return None
    size = 1
    for d in shape[2:]:
        if d is None:
            return None
        size *= d
    return size


@coupling_rule("Resize", "Upsample")
def _resize(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """Spatial resizing (FPN/YOLO necks' nearest upsampling) with constant scales of 1 on the channel axis."""
    n = view.nodes[node]
    if slot != 0 or edge.rank is None or edge.cols != 1:
        return Stop("channels reach a Resize parameter")
    scales = None
    if n.op_type == "Upsample":
        scales = view.const(n.input[1]) if len(n.input) > 1 else view.attr(node, "scales")
    elif len(n.input) > 3 and n.input[3]:
        return Stop("Resize to explicit sizes")
    elif len(n.input) > 2 and n.input[2]:
        scales = view.const(n.input[2])
    if scales is None:
        return Stop("Resize with computed scales")
    scales = np.reshape(np.asarray(scales, dtype=np.float64), -1)
    axes = view.attr(node, "axes")
    axis = edge.axis % edge.rank
    listed = [int(a) % edge.rank for a in axes] if axes is not None else list(range(edge.rank))
    if len(listed) != scales.size or (axis in listed and scales[listed.index(axis)] != 1):
        return Stop("Resize that scales the channel axis")
    return Through((_out_edge(view, node, edge),))


@coupling_rule("Flatten")
def _flatten(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if int(view.attr(node, "axis", 1)) != 1:
        return Stop("Flatten with axis != 1")
    s = _spatial(view, edge)
    if s is None or edge.cols != 1:
        return Stop("Flatten of a tensor of unknown spatial size")
    return Through((Edge(view.nodes[node].output[0], 1, 2, s),))


@coupling_rule("Reshape")
def _reshape(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    shape = view.const(n.input[1]) if slot == 0 else None
    last = edge.rank is not None and edge.axis % edge.rank == edge.rank - 1
    out_rank = shape.size if shape is not None else len(view.shapes.get(n.output[0]) or ())
    if last and shape is not None and edge.cols == 1 and shape.size >= 2:
        dims = [int(d) for d in shape.reshape(-1)]
        out_shape = view.shapes.get(n.output[0])
        stays = dims[-1] == channels or (dims[-1] == -1 and out_shape is not None and out_shape[-1] == channels)
        if stays and (dims[-1] == -1 or view.const_users(n.input[1]) == 1):
            # tokens merged or split, features stay last: (N, T, C) <-> (N·T, C) (tf2onnx's Dense on 3-D inputs)
            fix = ReshapeFix(node, n.input[1], len(dims) - 1, 1) if dims[-1] == channels else None
            return Through((Edge(n.output[0], len(dims) - 1, len(dims)),), reshape=fix)
    moved = _unit_reshape(view, node, edge, channels, shape)
    if moved is not None:
        return moved
    if last and out_rank > (edge.rank or 0):
        return Stop("Reshape splits the feature axis other than (..., T, H·d) -> (..., T, H, d) attention heads")
    s = _spatial(view, edge)
    if shape is None or s is None or edge.cols != 1:
        return Stop("Reshape other than a flatten of a known (N, C, ...) tensor")
    dims = [int(d) for d in shape.reshape(-1)]
    if len(dims) != 2 or (dims[0] not in (-1, 0) and dims[0] != (view.shapes.get(edge.tensor) or (None,))[0]):
        return Stop(f"Reshape to {dims} is not a flatten to (N, C·H·W)")
    if dims[1] == -1:
        return Through((Edge(n.output[0], 1, 2, s),))
    if dims[1] != channels * s or view.const_users(n.input[1]) != 1:
        return Stop(f"Reshape to {dims} is not a flatten to (N, C·H·W)")
    return Through((Edge(n.output[0], 1, 2, s),), reshape=ReshapeFix(node, n.input[1], 1, s))


def _unit_reshape(view: GraphView, node: int, edge: Edge, channels: int, shape: np.ndarray | None) -> Step | None:
    """A Reshape that only inserts or removes unit axes after the batch: ``(N, C) → (N, C, 1, 1)`` (tf2onnx's
    squeeze-excite), ``(N, C, 1, 1) → (N, C)``; the channels keep their order.  ``None`` if it is not one."""
    n = view.nodes[node]
    in_shape, out_shape = view.shapes.get(n.input[0]), view.shapes.get(n.output[0])
    if shape is None or edge.rank is None or edge.cols != 1 or not in_shape or not out_shape or channels < 2:
        return None
    if None in in_shape[1:] or None in out_shape[1:] or len(in_shape) != edge.rank:
        return None
    ax = edge.axis % edge.rank
    if ax == 0 or in_shape[ax] != channels:
        return None
    rest_in = [(i, d) for i, d in enumerate(in_shape) if i > 0 and d != 1]
    rest_out = [(i, d) for i, d in enumerate(out_shape) if i > 0 and d != 1]
    if [d for _, d in rest_in] != [d for _, d in rest_out]:
        return None
    out_ax = rest_out[[i for i, _ in rest_in].index(ax)][0]
    dims = [int(d) for d in shape.reshape(-1)]
    if len(dims) != len(out_shape) or dims[out_ax] not in (channels, -1):
        return None
    if dims[out_ax] == channels and view.const_users(n.input[1]) != 1:
        return Stop("Reshape shape shared by several nodes")
    fix = ReshapeFix(node, n.input[1], out_ax, 1) if dims[out_ax] == channels else None
    return Through((Edge(n.output[0], out_ax, len(out_shape)),), reshape=fix)


@coupling_rule("Transpose")
def _transpose(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """Layout changes (tf2onnx's NHWC ↔ NCHW): the channel axis moves to ``perm.index(axis)``."""
    if edge.rank is None or edge.cols != 1:
        return Stop("Transpose of a tensor of unknown rank or of flattened channels")
    perm = view.attr(node, "perm")
    perm = [int(p) for p in perm] if perm is not None else list(range(edge.rank))[::-1]
    if sorted(perm) != list(range(edge.rank)):
        return Stop(f"Transpose with perm {perm} for a rank-{edge.rank} tensor")
    return Through((Edge(view.nodes[node].output[0], perm.index(edge.axis % edge.rank), edge.rank, per=edge.per),))


#: op type → the data input's edge given the output's, for rules that move the channel axis in ways
#: :func:`input_edge` does not know (``None``: not moved by that rule).
INPUT_EDGES: dict[str, Callable[[GraphView, int, Edge], Edge | None]] = {}


def input_edge(view: GraphView, node: int, out: Edge) -> Edge:
    """The edge of a one-input pass-through node's data input, given its output's (backward tracing).

    Same axis except where the rule moves it: Transpose, and reductions without ``keepdims``, and
    what :data:`INPUT_EDGES` says (attention heads split out of the features).
    """
    n = view.nodes[node]
    if n.op_type in INPUT_EDGES and (moved := INPUT_EDGES[n.op_type](view, node, out)) is not None:
        return moved
    if n.op_type == "Transpose" and out.rank is not None:
        perm = view.attr(node, "perm")
        perm = [int(p) for p in perm] if perm is not None else list(range(out.rank))[::-1]
        if sorted(perm) == list(range(out.rank)):
            return Edge(n.input[0], perm[out.axis % out.rank], out.rank, out.cols, out.per)
    shape = view.shapes.get(n.input[0]) if n.input else None
    if n.op_type in ("Squeeze", "Unsqueeze") and shape and out.rank is not None and (axes := _axes(view, node)):
        rank_in = len(shape)
        if n.op_type == "Squeeze":
            gone = {a % rank_in for a in axes}
            kept = [a for a in range(rank_in) if a not in gone]
            return Edge(n.input[0], kept[out.axis % out.rank], rank_in, out.cols, out.per)
        new = {a % out.rank for a in axes}
        ax = out.axis % out.rank
        return Edge(n.input[0], ax - sum(a < ax for a in new), rank_in, out.cols, out.per)
    if n.op_type.startswith("Reduce") and not int(view.attr(node, "keepdims", 1)) and shape and out.rank is not None:
        axes = view.attr(node, "axes")
        if axes is None and len(n.input) > 1 and (v := view.const(n.input[1])) is not None:
            axes = [int(a) for a in np.reshape(v, -1)]
        kept = [a for a in range(len(shape)) if a not in {int(x) % len(shape) for x in axes or ()}]
        if len(kept) == out.rank:
            return Edge(n.input[0], kept[out.axis % out.rank], len(shape), out.cols, out.per)
    return Edge(n.input[0], out.axis, out.rank, out.cols, out.per)


@coupling_rule("ConvTranspose")
def _conv_transpose(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    if slot != 0:
        return Stop("channels reach a ConvTranspose weight")
    w = view.const(n.input[1])
    if w is None or view.const_users(n.input[1]) != 1:
        return Stop("ConvTranspose with computed or shared weights")
    if w.ndim not in (3, 4) or edge.cols != 1 or (edge.rank is not None and edge.axis % edge.rank != 1):
        return Stop("ConvTranspose other than 1-D or 2-D over the channel axis")
    if int(view.attr(node, "group", 1)) != 1:
        return Stop("grouped ConvTranspose as a consumer is not supported yet")
    if view.attr(node, "output_shape") is not None or _auto_pad(view, node) not in ("NOTSET", ""):
        return Stop("ConvTranspose with output_shape or auto_pad (implicit pads) as a consumer")
    if w.shape[0] != channels:
        return Stop(f"ConvTranspose expects {w.shape[0]} input channels, group has {channels}")
    return Consume(conv_consumer(view, node, kind="convt"))


@coupling_rule("Conv")
def _conv(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    if slot != 0:
        return Stop("channels reach a Conv weight")
    w = view.const(n.input[1])
    if w is None or view.const_users(n.input[1]) != 1:
        return Stop("Conv with computed or shared weights")
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
    return Through((_out_edge(view, node, edge),), tuple(params), grouped=node, per_group=channels // group)


@coupling_rule("Gemm")
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


@coupling_rule("MatMul")
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


def _single_user(view: GraphView, tensor: str) -> tuple[int, int] | None:
    if tensor in view.outputs:
        return None
    users = view.users(tensor)
    return (users[0].node, users[0].slot) if len(users) == 1 else None


ACTIVATION_OPS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Softplus", "Elu", "Gelu")


def activation_of(view: GraphView, node: int) -> Activation | None:
    """The :class:`Activation` computed by ``node``, ``None`` if it is not an activation op."""
    n = view.nodes[node]
    op = n.op_type
    if op == "Relu":
        return Activation("relu")
    if op == "LeakyRelu":
        return Activation("leaky_relu", (float(view.attr(node, "alpha", 0.01)),))
    if op == "Clip":
        lo, hi = -np.inf, np.inf
        if len(n.input) > 1 and n.input[1]:
            v = view.const(n.input[1])
            if v is None:
                return None
            lo = float(v)
        if len(n.input) > 2 and n.input[2]:
            v = view.const(n.input[2])
            if v is None:
                return None
            hi = float(v)
        if view.attr(node, "min") is not None:
            lo = float(view.attr(node, "min"))
        if view.attr(node, "max") is not None:
            hi = float(view.attr(node, "max"))
        return Activation("clip", (lo, hi))
    if op == "HardSigmoid":
        return Activation("hard_sigmoid", (float(view.attr(node, "alpha", 0.2)), float(view.attr(node, "beta", 0.5))))
    if op == "Elu":
        return Activation("elu", (float(view.attr(node, "alpha", 1.0)),))
    if op == "Gelu":  # opset 20; the tanh approximation is not the solvers' "gelu"
        approximate = view.attr(node, "approximate", "none")
        return Activation("gelu") if approximate in ("none", b"none") else None
    if op in ACTIVATION_OPS:
        return Activation({"Sigmoid": "sigmoid", "Tanh": "tanh", "HardSwish": "hard_swish", "Softplus": "softplus"}[op])
    return None


def _post(view: GraphView, out: str) -> dict[str, object]:
    """Follow a consumer's output through BN, a residual Add and an activation."""
    post: dict[str, object] = {"output": out}
    nxt = _single_user(view, out)
    if nxt is not None and view.nodes[nxt[0]].op_type == "BatchNormalization" and nxt[1] == 0:
        bn = nxt[0]
        if all(view.is_const(t) and view.const_users(t) == 1 for t in view.nodes[bn].input[1:5]):
            post["bn"] = bn
            out = view.nodes[bn].output[0]
            post["output"] = out
            nxt = _single_user(view, out)
    cur = out
    if nxt is not None and view.nodes[nxt[0]].op_type == "Add":
        other = view.nodes[nxt[0]].input[1 - nxt[1]]
        if not view.is_const(other):
            post["offset"] = other
            cur = view.nodes[nxt[0]].output[0]
            nxt = _single_user(view, cur)
    if nxt is not None and nxt[1] == 0 and (act := activation_of(view, nxt[0])) is not None:
        post["activation"] = act
        post["act_out"] = view.nodes[nxt[0]].output[0]
    elif "offset" in post:
        del post["offset"]  # an add without a following activation: plain identity target
    return post


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
        nxt = _single_user(view, out)
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


@dataclass(frozen=True)
class Shuffle:
    """A channel shuffle (ShuffleNet): ``Reshape (N, C, H, W) → (N, g, C/g, H, W)``, ``Transpose`` of axes
    1 and 2, ``Reshape`` back to ``(N, C, H, W)``; ``nodes`` are the three nodes."""

    nodes: tuple[int, int, int]
    groups: int
    channels: int

    def target(self, c: int) -> int:
        """The output position of input channel ``c``: ``(g, i) → (i, g)``."""
        per = self.channels // self.groups
        return (c % per) * self.groups + c // per


def _only_user(view: GraphView, tensor: str, op: str) -> int | None:
    users = view.users(tensor)
    if tensor in view.outputs or len(users) != 1 or view.nodes[users[0].node].op_type != op:
        return None
    return users[0].node


def channel_shuffle(view: GraphView, node: int, edge: Edge) -> Shuffle | None:
    """The channel shuffle that starts at Reshape ``node`` (reading the channels as ``edge``), or ``None``."""
    n = view.nodes[node]
    shape_in = view.shapes.get(n.input[0])
    first = view.const(n.input[1]) if len(n.input) > 1 else None
    if edge.rank != 4 or edge.axis % 4 != 1 or edge.cols != 1 or first is None or first.size != 5 or not shape_in:
        return None
    channels = shape_in[1]
    dims = [int(d) for d in first.reshape(-1)]
    if channels is None or dims[1] <= 0 or dims[2] <= 0 or dims[1] * dims[2] != channels:
        return None
    t = _only_user(view, n.output[0], "Transpose")
    if t is None or [int(p) for p in (view.attr(t, "perm") or ())] != [0, 2, 1, 3, 4]:
        return None
    last = _only_user(view, view.nodes[t].output[0], "Reshape")
    second = view.const(view.nodes[last].input[1]) if last is not None else None
    if last is None or second is None or second.size != 4 or int(second.reshape(-1)[1]) not in (channels, -1):
        return None
    if int(second.reshape(-1)[1]) == -1 and (shape_out := view.shapes.get(view.nodes[last].output[0])):
        if len(shape_out) != 4 or shape_out[1] != channels:
            return None
    return Shuffle((node, t, last), dims[1], int(channels))


def shuffle_ending_at(view: GraphView, node: int, edge: Edge) -> Shuffle | None:
    """The channel shuffle whose last Reshape is ``node`` (its output carrying the channels as ``edge``)."""
    t = view.producer.get(view.nodes[node].input[0])
    if edge.rank != 4 or edge.axis % 4 != 1 or t is None or view.nodes[t].op_type != "Transpose":
        return None
    first = view.producer.get(view.nodes[t].input[0])
    if first is None or view.nodes[first].op_type != "Reshape":
        return None
    sh = channel_shuffle(view, first, Edge(view.nodes[first].input[0], 1, 4))
    return sh if sh is not None and sh.nodes[2] == node else None
