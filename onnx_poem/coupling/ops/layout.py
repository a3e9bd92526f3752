"""Ops that move the channel axis without touching the channels: ``Transpose`` (tf2onnx's NHWC ↔ NCHW),
``Squeeze`` and ``Unsqueeze`` of other axes (a CRNN squeezes its height away)."""

from __future__ import annotations

from ...graph import GraphView
from ..flow import Edge, OpKind, Step, Stop, Through, const_axes, register


def _perm(view: GraphView, node: int, rank: int) -> list[int]:
    perm = view.attr(node, "perm")
    return [int(p) for p in perm] if perm is not None else list(range(rank))[::-1]


def _transpose(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """The channel axis moves to ``perm.index(axis)``."""
    if edge.rank is None or edge.cols != 1:
        return Stop("Transpose of a tensor of unknown rank or of flattened channels")
    perm = _perm(view, node, edge.rank)
    if sorted(perm) != list(range(edge.rank)):
        return Stop(f"Transpose with perm {perm} for a rank-{edge.rank} tensor")
    return Through((Edge(view.nodes[node].output[0], perm.index(edge.axis % edge.rank), edge.rank, per=edge.per),))


def _transpose_input(view: GraphView, node: int, out: Edge) -> Edge | None:
    if out.rank is None:
        return None
    perm = _perm(view, node, out.rank)
    if sorted(perm) != list(range(out.rank)):
        return None
    return Edge(view.nodes[node].input[0], perm[out.axis % out.rank], out.rank, out.cols, out.per)


def _squeeze(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """Removing or inserting unit axes other than the channel axis."""
    axes = const_axes(view, node)
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


def _squeeze_input(view: GraphView, node: int, out: Edge) -> Edge | None:
    n = view.nodes[node]
    shape = view.shapes.get(n.input[0]) if n.input else None
    axes = const_axes(view, node)
    if not shape or out.rank is None or not axes:
        return None
    rank_in = len(shape)
    if n.op_type == "Squeeze":
        gone = {a % rank_in for a in axes}
        kept = [a for a in range(rank_in) if a not in gone]
        return Edge(n.input[0], kept[out.axis % out.rank], rank_in, out.cols, out.per)
    new = {a % out.rank for a in axes}
    ax = out.axis % out.rank
    return Edge(n.input[0], ax - sum(a < ax for a in new), rank_in, out.cols, out.per)


register(
    OpKind(
        "transpose",
        ("Transpose",),
        flow=_transpose,
        input_edge=_transpose_input,
        heads=True,
        doc="moves the channel axis (NHWC <-> NCHW)",
    )
)
register(
    OpKind(
        "squeeze",
        ("Squeeze", "Unsqueeze"),
        flow=_squeeze,
        input_edge=_squeeze_input,
        heads=True,
        doc="removes or inserts unit axes other than the channels'",
    )
)
