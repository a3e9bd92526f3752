"""Binary elementwise ops: joins of two computed tensors, per-channel constants, ``Pow``.

* ``Add``/``Sub``/``Mul``/``Div``/``Max``/``Min`` of two computed tensors that both carry the channels
  (a residual join, ``x·Φ(x)`` of GELU, a squeeze-excite gate) put both operands and the output in one
  channel space; backward, every producer behind either operand joins the group.  An operand broadcast
  along the channel axis (an attention mask) carries none.  An ``Add``/``Sub`` of two computed operands
  marks the group as a possible residual stream.
* with a constant operand, the constant is sliced with the channels when it varies along them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...graph import GraphView
from ..flow import Edge, OpKind, Step, Stop, Through, const_per_channel, out_edge, register
from .attention import carries

if TYPE_CHECKING:
    from ..trace import Tracer

#: binary elementwise ops through which channels pass when both operands carry them
JOINABLE = ("Add", "Sub", "Mul", "Div", "Max", "Min")


def aligned(view: GraphView, tensor: str, edge: Edge) -> Edge:
    """``edge`` moved to ``tensor``, an operand or result of a broadcasting op of another rank (axes
    aligned from the right); the same axis where the rank is not known."""
    shape = view.shapes.get(tensor)
    if shape is None or edge.rank is None or len(shape) == edge.rank:
        return Edge(tensor, edge.axis, edge.rank, edge.cols, edge.per)
    return Edge(tensor, edge.aligned(len(shape)), len(shape), edge.cols, edge.per)


def _join(tr: Tracer, node: int, slot: int | None, space: int, edge: Edge) -> bool:
    """Two computed operands: both (where they carry the channels) and the output are one space."""
    view, n = tr.view, tr.view.nodes[node]
    if any(view.is_const(x) for x in n.input):
        return False
    if slot is None:  # from the output: every operand that carries the channels
        joined = [x for x in n.input if carries(view, x, edge)]  # a broadcast operand (mask) carries none
        if not joined:
            tr.stop(node, "no operand carries the channels")
        if n.op_type in ("Add", "Sub") and len(joined) > 1:
            tr.adds.add(node)
        for x in joined:
            tr.join(x, space, aligned(view, x, edge), via=node)
        return True
    if len(n.input) != 2:
        return False
    other = n.input[1 - slot]
    if carries(view, other, edge):  # else broadcast along the channels (an attention mask)
        if n.op_type in ("Add", "Sub"):
            tr.adds.add(node)
        tr.join(other, space, aligned(view, other, edge), via=node)
    else:
        tr.visited.add((node, other))
    tr.join(n.output[0], space, aligned(view, n.output[0], edge), via=node)
    return True


def _binary(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    other = n.input[1 - slot]
    if not view.is_const(other):
        return Stop(f"{n.op_type} with another computed tensor (residual or gate; not pruned yet)")
    if n.op_type == "Div" and slot == 1:
        return Stop("channels are a divisor")
    p = const_per_channel(view, other, edge, channels)
    if isinstance(p, str):
        return Stop(f"{n.op_type}: {p}")
    return Through((out_edge(view, node, edge),), (p,) if p is not None else ())


def _pow(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """``x ** c`` with a constant scalar exponent is elementwise (tanh-approximated GELU uses ``x³``)."""
    e = view.const(view.nodes[node].input[1])
    if slot != 0 or e is None or e.size != 1:
        return Stop("Pow with a computed or per-element exponent")
    return Through((out_edge(view, node, edge),))


register(
    OpKind(
        "arithmetic",
        ("Add", "Sub", "Mul", "Div"),
        flow=_binary,
        early=_join,
        heads=True,
        doc="with a constant: channels pass, a per-channel constant sliced; "
        "of two computed tensors: a join (residual add, gate)",
    )
)
register(
    OpKind("extremum", ("Max", "Min"), early=_join, doc="of two computed tensors: a join, both operands in one group")
)
register(OpKind("power", ("Pow",), flow=_pow, heads=True, doc="a constant scalar exponent: channels pass"))
