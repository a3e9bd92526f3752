"""How channels flow through one op, and the registry of op kinds that says it.

Every op type the tracer (:mod:`onnx_poem.coupling.trace`) can follow channels through has one or
more :class:`OpKind` objects, registered by the modules of :mod:`onnx_poem.coupling.ops` (one module
per op kind: its channel flow, the layers it recognises, the fixes it records and their rewrite
edits; their unit tests in ``tests/test_ops.py``, attention's in ``tests/test_attention.py``).  An op
kind answers, each part optional:

* ``flow`` - a :data:`Rule`: the channels reach input ``slot`` of the node as ``edge``; the answer
  is a :class:`Through` (they pass to the outputs, with the constants to slice and the fixes the
  rewrite applies), a :class:`Consume` (the node is a layer that reads them as input columns and is
  reconstructed), a :class:`Stop` (the group is left unpruned, with the reason), or ``None`` (not
  this kind's node: the next kind of the op type answers);
* ``hook`` / ``early`` - a :data:`Hook` for what one input-to-output step cannot say: new channel
  *spaces* and the links between them (a channel ``Pad``, ``Concat``, ``Split``, a channel
  shuffle, grouped-query attention's key/value repeat) or joins of two computed operands (residual
  ``Add``, attention's ``q·kᵀ``).  Hooks act on the tracer and return whether they took the node;
  ``early`` hooks run before the check that attention heads may pass the op, ``hook`` after it;
* ``input_edge`` - backward tracing: the data input's edge given the output's, where the op moves
  the channel axis;
* ``producer`` - the node is a layer whose output channels start a group (:class:`Produced`), an
  :class:`~onnx_poem.coupling.groups.Unprunable` one, or ``None``;
* ``heads`` - the kind's rules take attention heads (``Edge.per > 1``) themselves; any other op stops
  a group whose channels reach it as heads (``heads_reason`` says why, where a kind knows better).

Adding support for an op is one new module in :mod:`onnx_poem.coupling.ops` that calls
:func:`register` (and its import in that package's ``__init__``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from ..graph import GraphView
from .groups import Consumer, Edit, Index, ParamSlice, Unprunable

if TYPE_CHECKING:
    from .trace import Tracer


@dataclass(frozen=True)
class Edge:
    """Where the channels are: ``tensor``'s ``axis`` (of ``rank`` dims), ``cols`` entries per channel.

    ``per > 1``: one entry of ``axis`` holds ``per`` channels, which run along the last axis (attention
    heads: ``(N, T, H, d)`` after ``(N, T, H·d)`` is split into heads, ``per = d``; the group's atoms are
    then whole heads, see :mod:`onnx_poem.coupling.ops.attention`).  Only op kinds with ``heads`` keep
    ``per``; any other op stops such a group.
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
    """The channels pass the node to ``outputs``; ``params`` are sliced with them, ``edits`` are fixes the
    rewrite applies (a shape constant, a grouped conv's ``group``); ``block`` > 1: the atoms become blocks of
    that many channels (a grouped conv's channels per group); ``heads`` > 1: the atoms become attention heads
    of that many channels."""

    outputs: tuple[Edge, ...]
    params: tuple[ParamSlice, ...] = ()
    edits: tuple[Placeable, ...] = ()
    block: int = 1
    heads: int = 1


@dataclass(frozen=True)
class Consume:
    consumer: Consumer


@dataclass(frozen=True)
class Stop:
    """Channels cannot pass; ``unknown_op``: the op type when no op kind takes the op at all."""

    reason: str
    unknown_op: str | None = None


@dataclass(frozen=True)
class Produced:
    """A layer's output channels: their count, the constants sliced with them (weight and bias), the output's
    edge."""

    channels: int
    params: tuple[ParamSlice, ...]
    edge: Edge


@dataclass(frozen=True)
class Placement:
    """Where a group's atoms are, per channel space of the tracer (given to each :class:`Pending` fix when
    the group is built).

    Attributes:
        index: per space, atom → its position there (``-1``: absent).
        unit: per space, blocks per position (the query side of grouped-query attention: ``repeat``).
        positions: per space, its size in positions.
        count: the atoms.
        sizes: per space, its size in channels.
    """

    index: list[np.ndarray]
    unit: list[int]
    positions: list[int]
    count: int
    sizes: list[int]

    def ix(self, space: int) -> Index:
        """``index`` of ``space`` as a member stores it (``None``: the identity)."""
        idx = self.index[space]
        return None if self.positions[space] == self.count and (idx == np.arange(self.count)).all() else _ints(idx)

    def ix_all(self, space: int) -> tuple[int, ...]:
        return _ints(self.index[space])


def _ints(a: np.ndarray) -> tuple[int, ...]:
    return tuple(map(int, a))


class Pending(Protocol):
    """A fix recorded while tracing, before the group's atoms are known."""

    @property
    def spaces(self) -> tuple[int, ...]: ...

    @property
    def per_position(self) -> bool:
        """It needs one block per position in its spaces (no grouped-query attention's query side)."""
        ...

    @property
    def unblocked(self) -> str | None:
        """Why it cannot be in a group pruned by blocks of channels (``None``: it can)."""
        ...

    def place(self, p: Placement) -> Edit:
        """The fix with its atoms' positions."""
        ...

    def conflict(self, view: GraphView, others: Sequence[Pending]) -> str | None:
        """Why the group cannot be pruned with this fix among ``others`` (``None``: it can)."""
        ...


class OneSpace:
    """Defaults of a :class:`Pending` fix of one channel space, its ``space`` field: it needs one block per
    position, may be in a group pruned by blocks, and conflicts with no other fix."""

    space: int
    per_position: ClassVar[bool] = True
    unblocked: ClassVar[str | None] = None

    @property
    def spaces(self) -> tuple[int, ...]:
        return (self.space,)

    def conflict(self, view: GraphView, others: Sequence[Pending]) -> str | None:
        return None


class Placeable(Edit, Protocol):
    """A fix of one space, recorded in a :class:`Through` step (:class:`At` places it)."""

    @property
    def per_position(self) -> bool: ...

    def placed(self, index: Index, unit: int) -> Edit: ...


@dataclass(frozen=True)
class At:
    """A :class:`Placeable` fix found in channel space ``space``."""

    edit: Placeable
    space: int
    unblocked: ClassVar[str | None] = None  # such fixes never stop a group pruned by blocks

    @property
    def spaces(self) -> tuple[int, ...]:
        return (self.space,)

    @property
    def per_position(self) -> bool:
        return self.edit.per_position

    def place(self, p: Placement) -> Edit:
        return self.edit.placed(p.ix(self.space), p.unit[self.space])

    def conflict(self, view: GraphView, others: Sequence[Pending]) -> str | None:
        check = getattr(self.edit, "conflict", None)
        return check(view, [o.edit for o in others if isinstance(o, At)]) if check is not None else None


Step = Through | Consume | Stop
#: ``(view, node, slot, edge, channels) → step`` (``None``: not this kind's node)
Rule = Callable[[GraphView, int, int, Edge, int], Step | None]
#: ``(tracer, node, slot, space, edge) → taken`` (``slot`` is ``None`` when the channels reach the node's output)
Hook = Callable[["Tracer", int, int | None, int, Edge], bool]
InputEdge = Callable[[GraphView, int, Edge], Edge | None]
Producer = Callable[[GraphView, int], Produced | Unprunable | None]


@dataclass(frozen=True)
class OpKind:
    """What one kind of op does to channels (see the module docstring)."""

    name: str
    ops: tuple[str, ...]
    doc: str = ""  # what it does to channels, in one line (``onnx-poem ops``)
    flow: Rule | None = None
    hook: Hook | None = None
    early: Hook | None = None
    input_edge: InputEdge | None = None
    producer: Producer | None = None
    heads: bool = False
    heads_reason: str | None = None


KINDS: dict[str, list[OpKind]] = {}


def register(kind: OpKind, *, before: str | None = None) -> OpKind:
    """Add ``kind`` for each of its op types: after the kinds registered before it, or before the kind named
    ``before`` where the op type has one (its flow rule answers first)."""
    for op in kind.ops:
        kinds = KINDS.setdefault(op, [])
        at = next((i for i, k in enumerate(kinds) if k.name == before), len(kinds))
        kinds.insert(at, kind)
    return kind


def kinds_of(op: str) -> list[OpKind]:
    return KINDS.get(op, [])


def flow(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """The first answer of the node's kinds' rules (``Stop`` if none answers)."""
    op = view.nodes[node].op_type
    for kind in kinds_of(op):
        if kind.flow is not None and (step := kind.flow(view, node, slot, edge, channels)) is not None:
            return step
    return Stop(f"op {op} is not supported", unknown_op=op)


def input_edge(view: GraphView, node: int, out: Edge) -> Edge:
    """The edge of a one-input pass-through node's data input, given its output's (backward tracing): what
    the node's kinds say, else the same axis."""
    n = view.nodes[node]
    for kind in kinds_of(n.op_type):
        if kind.input_edge is not None and (moved := kind.input_edge(view, node, out)) is not None:
            return moved
    return Edge(n.input[0], out.axis, out.rank, out.cols, out.per)


def producer_of(view: GraphView, node: int) -> Produced | Unprunable | None:
    """The layer ``node`` is, as a group's producer (``None``: not a layer)."""
    for kind in kinds_of(view.nodes[node].op_type):
        if kind.producer is not None and (found := kind.producer(view, node)) is not None:
            return found
    return None


def heads_stop(op: str) -> str | None:
    """Why attention heads may not pass an op of type ``op`` (``None``: one of its kinds takes them)."""
    kinds = kinds_of(op)
    if any(k.heads for k in kinds):
        return None
    return next((k.heads_reason for k in kinds if k.heads_reason), f"attention heads reach a {op}")


def out_edge(view: GraphView, node: int, edge: Edge, index: int = 0) -> Edge:
    """``edge`` moved to output ``index`` of ``node`` (same axis)."""
    out = view.nodes[node].output[index]
    return Edge(out, edge.axis, edge.rank, edge.cols, edge.per)


def const_per_channel(view: GraphView, name: str, edge: Edge, channels: int) -> ParamSlice | str | None:
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


def const_axes(view: GraphView, node: int) -> list[int] | None:
    """Constant ``axes`` of a Squeeze/Unsqueeze/Reduce (attribute before opset 13/18, input after); ``None`` if
    computed, ``[]`` if not given."""
    axes = view.attr(node, "axes")
    n = view.nodes[node]
    if axes is None and len(n.input) > 1 and n.input[1]:
        value = view.const(n.input[1])
        if value is None:
            return None
        axes = np.reshape(value, -1).tolist()
    return [int(a) for a in axes] if axes is not None else []


def single_user(view: GraphView, tensor: str) -> tuple[int, int] | None:
    """``(node, slot)`` of the only reader of ``tensor`` (``None``: several, none, or a graph output)."""
    if tensor in view.outputs:
        return None
    users = view.users(tensor)
    return (users[0].node, users[0].slot) if len(users) == 1 else None


def only_user(view: GraphView, tensor: str, op: str, slot: int | None = None) -> int | None:
    """The only reader of ``tensor`` if it is an ``op`` node (reading it at input ``slot``, when given)."""
    users = view.users(tensor)
    if tensor in view.outputs or len(users) != 1 or view.nodes[users[0].node].op_type != op:
        return None
    return users[0].node if slot is None or users[0].slot == slot else None


def where(view: GraphView, node: int) -> str:
    """``label (OpType)`` of ``node``, for reasons."""
    return f"{view.node_label(node)} ({view.nodes[node].op_type})"
