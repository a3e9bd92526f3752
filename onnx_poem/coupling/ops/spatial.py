"""Ops over the spatial (or token) axes that leave the channels alone: pooling, ``Resize``/``Upsample`` with a
scale of 1 on the channel axis, and reductions over other axes (global pooling written as ``ReduceMean``)."""

from __future__ import annotations

import numpy as np

from ...graph import GraphView
from ..flow import Edge, OpKind, Step, Stop, Through, const_axes, out_edge, register

POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")
REDUCTIONS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1")


def _pool(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if edge.cols != 1 or edge.rank is None or edge.axis % edge.rank != 1:
        return Stop("pooling over a tensor whose channel axis is not 1")
    return Through((out_edge(view, node, edge),))


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
    return Through((out_edge(view, node, edge),))


def _reduce(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """Reductions over axes other than the channel axis (``keepdims=1``), e.g. global pooling."""
    n = view.nodes[node]
    if slot != 0 or edge.rank is None or edge.cols != 1:
        return Stop("channels reach a reduction parameter")
    axes = const_axes(view, node)
    if axes is None:
        return Stop("reduction over computed axes")
    if not axes:
        return Stop("reduction over all axes")
    reduced = {int(a) % edge.rank for a in axes}
    ax = edge.axis % edge.rank
    if ax in reduced:
        return Stop("reduction over the channel axis")
    if not int(view.attr(node, "keepdims", 1)):  # the channel axis moves left by the reduced axes before it
        return Through((Edge(n.output[0], ax - sum(a < ax for a in reduced), edge.rank - len(reduced)),))
    return Through((out_edge(view, node, edge),))


def _reduce_input(view: GraphView, node: int, out: Edge) -> Edge | None:
    """Backward through a reduction without ``keepdims``: the output's axes are the input's unreduced ones."""
    n = view.nodes[node]
    shape = view.shapes.get(n.input[0]) if n.input else None
    if int(view.attr(node, "keepdims", 1)) or not shape or out.rank is None:
        return None
    axes = const_axes(view, node) or ()  # computed axes: kept as if none, the rank check below decides
    kept = [a for a in range(len(shape)) if a not in {x % len(shape) for x in axes}]
    if len(kept) != out.rank:
        return None
    return Edge(n.input[0], kept[out.axis % out.rank], len(shape), out.cols, out.per)


register(OpKind("pooling", POOLS, flow=_pool, doc="over the spatial axes: channels pass"))
register(
    OpKind("resize", ("Resize", "Upsample"), flow=_resize, doc="with a scale of 1 on the channel axis: channels pass")
)
register(
    OpKind(
        "reduction",
        REDUCTIONS,
        flow=_reduce,
        input_edge=_reduce_input,
        doc="over axes other than the channels' (global pooling): channels pass",
    )
)
