"""Find the prunable channel groups of a graph.

Every Conv (``group == 1``), Gemm and MatMul with a constant weight is a
*producer*.  From its output the channels are followed through the rules of
:mod:`onnx_poem.coupling.rules` until every path ends in a consumer layer.  If
any path reaches an op with no rule, a non-constant operand (residual Add,
Concat, ...), or a graph output, the group is left unpruned and the reason is
recorded as an :class:`Unprunable`.
"""

from __future__ import annotations

import logging

from ..graph import GraphView
from .groups import ChannelGroup, Consumer, Coupling, ParamSlice, ReshapeFix, Unprunable
from .rules import RULES, Consume, Edge, Stop, Through

logger = logging.getLogger(__name__)

#: binary elementwise ops through which channels pass when both operands carry them
JOINABLE = ("Add", "Sub", "Mul", "Div", "Max", "Min")


def _producer(view: GraphView, i: int) -> tuple[int, list[ParamSlice], Edge] | Unprunable | None:
    """Channels, sliced constants and output edge of producer node ``i`` (``None``: not a layer)."""
    n = view.nodes[i]
    label = view.node_label(i)
    if n.op_type not in ("Conv", "Gemm", "MatMul"):
        return None
    w = view.const(n.input[1]) if len(n.input) > 1 else None
    if w is None:
        return None  # activation x activation products (attention) are not layers
    if view.const_users(n.input[1]) != 1:
        return Unprunable(label, "weight shared by several nodes")
    out = n.output[0]
    shape = view.shapes.get(out)
    rank = len(shape) if shape is not None else None
    if n.op_type == "Conv":
        group = int(view.attr(i, "group", 1))
        if group != 1:
            if group == w.shape[0] and w.shape[1] == 1:
                return None  # depthwise: carried by the group of its input
            return Unprunable(label, f"grouped Conv (group={group}) is not supported yet")
        params = [ParamSlice(n.input[1], 0)]
        if len(n.input) > 2 and n.input[2]:
            params.append(ParamSlice(n.input[2], 0))
        return int(w.shape[0]), params, Edge(out, 1, rank or w.ndim)
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
            if c.size == channels and view.const_users(n.input[2]) == 1:
                params.append(ParamSlice(n.input[2], c.ndim - 1))
            elif c.size != 1:
                return Unprunable(label, f"Gemm bias of shape {c.shape} is not per-channel")
        return channels, params, Edge(out, 1, 2)
    return int(w.shape[1]), [ParamSlice(n.input[1], 1)], Edge(out, (rank or 2) - 1, rank)


def _trace(view: GraphView, producer: int, channels: int, start: Edge) -> ChannelGroup | Unprunable:
    """Follow the channels of ``start`` to their consumers (breadth first).

    A binary elementwise node (``Add``/``Mul``/...) whose *both* operands carry
    this group's channels (``x·Φ(x)`` GELU, ``x·σ(x)`` SiLU, decomposed
    HardSwish) passes them through once both operands have been reached; one
    that mixes in another computed tensor stops the group.
    """
    params: list[ParamSlice] = []
    consumers: dict[int, Consumer] = {}
    reshapes: list[ReshapeFix] = []
    grouped: list[int] = []
    tensors: list[str] = []
    queue = [start]
    seen: dict[str, Edge] = {}
    pending: dict[int, tuple[Edge, str]] = {}  # binary node → (edge reached, reason if never joined)
    label = view.node_label(producer)
    while queue or pending:
        if not queue:
            node, (edge, reason) = next(iter(pending.items()))
            return Unprunable(label, f"stopped at {view.node_label(node)} ({view.nodes[node].op_type}): {reason}")
        edge = queue.pop(0)
        if edge.tensor in seen:
            continue
        seen[edge.tensor] = edge
        tensors.append(edge.tensor)
        if edge.tensor in view.outputs:
            return Unprunable(label, f"channels reach graph output {edge.tensor!r}")
        for use in view.users(edge.tensor):
            n = view.nodes[use.node]
            if n.op_type in JOINABLE and len(n.input) == 2 and not any(view.is_const(t) for t in n.input):
                other = n.input[1 - use.slot]
                if (
                    other in seen and seen[other] == Edge(other, edge.axis, edge.rank, edge.cols)
                ) or other == edge.tensor:
                    pending.pop(use.node, None)
                    queue.append(Edge(n.output[0], edge.axis, edge.rank, edge.cols))
                elif use.node not in pending:
                    pending[use.node] = (
                        edge,
                        f"{n.op_type} with another computed tensor (residual or gate; not pruned yet)",
                    )
                continue
            rule = RULES.get(n.op_type)
            step = rule(view, use.node, use.slot, edge, channels) if rule else Stop(f"op {n.op_type} is not supported")
            if isinstance(step, Stop):
                return Unprunable(label, f"stopped at {view.node_label(use.node)} ({n.op_type}): {step.reason}")
            if isinstance(step, Consume):
                consumers[use.node] = step.consumer
                continue
            assert isinstance(step, Through)
            params.extend(step.params)
            queue.extend(step.outputs)
            if step.reshape is not None:
                reshapes.append(step.reshape)
            if step.grouped is not None:
                grouped.append(step.grouped)
    if not consumers:
        return Unprunable(label, "its channels reach no layer that could be reconstructed")
    return ChannelGroup(
        id=label,
        producer=producer,
        channels=channels,
        params=tuple(params),
        consumers=tuple(consumers[k] for k in sorted(consumers)),
        reshapes=tuple(reshapes),
        grouped=tuple(grouped),
        tensors=tuple(tensors),
    )


def find_groups(view: GraphView) -> Coupling:
    """All channel groups of ``view``'s graph, in topological order of their producers."""
    groups: list[ChannelGroup] = []
    unprunable: list[Unprunable] = []
    for i in range(len(view.nodes)):
        prod = _producer(view, i)
        if prod is None:
            continue
        if isinstance(prod, Unprunable):
            unprunable.append(prod)
            continue
        channels, params, edge = prod
        result = _trace(view, i, channels, edge)
        if isinstance(result, Unprunable):
            unprunable.append(result)
            continue
        groups.append(
            ChannelGroup(
                id=result.id,
                producer=i,
                channels=channels,
                params=(*params, *result.params),
                consumers=result.consumers,
                reshapes=result.reshapes,
                grouped=result.grouped,
                tensors=result.tensors,
            )
        )
    for u in unprunable:
        logger.debug("not pruned: %s: %s", u.where, u.reason)
    return Coupling(tuple(groups), tuple(unprunable))
