"""Find the prunable channel groups of a graph.

Every Conv (``group == 1``), Gemm and MatMul with a constant weight is a
*producer*.  From its output the channels are followed, forward *and*
backward, through the op kinds of :mod:`onnx_poem.coupling.ops` (registered in
:mod:`onnx_poem.coupling.flow`), so a group is a connected set of
channel-carrying tensors:

* forward through per-channel ops up to the consumer layers;
* through a binary ``Add``/``Mul``/... of two computed tensors (residual
  joins, ``x·Φ(x)`` GELU), pulling in the other operand and, backward, every
  producer behind it;
* through a channel ``Pad`` (CIFAR option-A shortcut) or ``Concat``, which
  put the channels of one tensor at an offset of another (a new *space*).

Positions of all spaces are merged with union-find into *atoms* (the unit
pruned); each member records ``index``: atom → its position, and each fix the
op kinds recorded (:class:`~onnx_poem.coupling.flow.Pending`) is placed in the
atoms.  If any path reaches an op no kind takes, a graph input or a graph
output, the whole group is left unpruned and the reason recorded as an
:class:`Unprunable`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import NoReturn

import numpy as np

from ..graph import GraphView
from . import ops  # noqa: F401  (registers every op kind)
from .flow import (
    At,
    Consume,
    Edge,
    Pending,
    Placement,
    Produced,
    Stop,
    Through,
    flow,
    heads_stop,
    input_edge,
    kinds_of,
    producer_of,
)
from .flow import where as _where_of
from .groups import ChannelGroup, Consumer, Coupling, ParamSlice, Unprunable

logger = logging.getLogger(__name__)


class TraceStop(Exception):
    """The component cannot be pruned (the message is the reason; ``unknown_op`` as in :class:`Stop`)."""

    def __init__(self, reason: str, unknown_op: str | None = None) -> None:
        super().__init__(reason)
        self.unknown_op = unknown_op


def _same(a: Edge, b: Edge, tensor: str) -> bool:
    """``a`` is ``b`` on ``tensor`` (axes compared modulo the rank)."""
    r = a.rank or 1
    return (a.tensor, a.axis % r, a.rank, a.cols, a.per) == (tensor, b.axis % (b.rank or 1), b.rank, b.cols, b.per)


@dataclass(frozen=True)
class Link:
    """Positions ``start_a … start_a + length - 1`` of space ``a`` are positions ``start_b …`` of space ``b``."""

    a: int
    b: int
    start_a: int
    start_b: int
    length: int


@dataclass(frozen=True)
class Member:
    """A tensor of the group: its channel space and where it carries the channels."""

    space: int
    edge: Edge


@dataclass(frozen=True)
class ParamAt:
    """A constant sliced with the channels of ``space``."""

    param: ParamSlice
    space: int


@dataclass(frozen=True)
class ConsumerAt:
    """A layer reading the channels of ``space``."""

    consumer: Consumer
    space: int


@dataclass(frozen=True)
class RepeatAt:
    """Grouped-query attention: key/value space ``kv``'s ``heads`` heads each read by the query heads of one unit
    of space ``q``."""

    kv: int
    q: int
    heads: int


@dataclass
class Tracer:
    """Breadth-first construction of one channel group (see module docstring).

    The op kinds' hooks (:data:`onnx_poem.coupling.flow.Hook`) act on it through :meth:`join`,
    :meth:`space_for`, :meth:`size_of`, :meth:`link`, :meth:`record`, :meth:`stop` and the rest of its
    public methods.
    """

    view: GraphView
    sizes: list[int] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    member: dict[str, Member] = field(default_factory=dict)
    params: list[ParamAt] = field(default_factory=list)
    consumers: dict[int, ConsumerAt] = field(default_factory=dict)
    producers: dict[int, int] = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)  # fixes in the order found
    block: int = 1  # channels per atom: a grouped conv's per_group (see ChannelGroup.block)
    queue: list[str] = field(default_factory=list)
    visited: set[tuple[int, str]] = field(default_factory=set)
    adds: set[int] = field(default_factory=set)  # Add/Sub nodes joining two computed tensors
    heads: bool = False  # the atoms are attention heads (see ChannelGroup.heads)
    scaled: set[int] = field(default_factory=set)  # MatMuls of two computed operands the channels pass
    units: dict[int, int] = field(default_factory=dict)  # space → atoms' blocks per position (query side of GQA)
    repeats: list[RepeatAt] = field(default_factory=list)

    def space(self, size: int) -> int:
        """A new channel space of ``size`` channels."""
        self.sizes.append(size)
        return len(self.sizes) - 1

    def stop(self, node: int | None, reason: str, unknown_op: str | None = None) -> NoReturn:
        """Give up on the group: ``stopped at <node>: reason`` (or the bare reason without a node)."""
        raise TraceStop(reason if node is None else f"stopped at {self.where(node)}: {reason}", unknown_op)

    def where(self, node: int) -> str:
        return _where_of(self.view, node)

    def join(self, tensor: str, space: int, edge: Edge, via: int | None = None) -> None:
        """Put ``tensor`` (carrying the channels as ``edge`` says) into ``space``, reached through node ``via``."""
        if via is not None:
            self.visited.add((via, tensor))
        edge = replace(edge, tensor=tensor)
        if tensor in self.member:
            other, old = self.member[tensor].space, self.member[tensor].edge
            if other != space:
                if self.sizes[other] != self.sizes[space]:
                    self.stop(
                        None, f"tensor {tensor!r} is reached with {self.sizes[other]} and {self.sizes[space]} channels"
                    )
                self.links.append(Link(other, space, 0, 0, self.sizes[space]))
            if (old.axis % (old.rank or 1), old.cols, old.per) != (edge.axis % (edge.rank or 1), edge.cols, edge.per):
                self.stop(None, f"tensor {tensor!r} carries the channels on two different axes")
            return
        self.member[tensor] = Member(space, edge)
        self.queue.append(tensor)

    def link(self, a: int, b: int, start_a: int, start_b: int, length: int) -> None:
        """Positions ``start_a …`` of space ``a`` are positions ``start_b …`` of space ``b``."""
        self.links.append(Link(a, b, start_a, start_b, length))

    def record(self, fix: Pending) -> None:
        """A fix the rewrite applies when the group is pruned."""
        self.pending.append(fix)

    def run(self) -> None:
        while self.queue:
            t = self.queue.pop(0)
            space, edge = self.member[t].space, self.member[t].edge
            if t in self.view.outputs:
                self.stop(None, f"channels reach graph output {t!r}")
            if t in self.view.captured:
                self.stop(None, f"tensor {t!r} is read inside a control-flow subgraph (If/Loop/Scan)")
            p = self.view.producer.get(t)
            if p is None:
                self.stop(None, f"channels come from graph input {t!r}")
            if (p, t) not in self.visited:
                self.visited.add((p, t))
                self.backward(p, t, space, edge)
            for use in self.view.users(t):
                if (use.node, t) not in self.visited:
                    self.visited.add((use.node, t))
                    self.forward(use.node, use.slot, t, space, edge)

    def _hooks(self, node: int, slot: int | None, space: int, edge: Edge) -> bool:
        """Run the node's kinds' hooks: ``early`` ones, the attention-heads check, then the others; ``True`` if
        one took the node."""
        op = self.view.nodes[node].op_type
        kinds = kinds_of(op)
        if any(k.early is not None and k.early(self, node, slot, space, edge) for k in kinds):
            return True
        if edge.per != 1 and (reason := heads_stop(op)) is not None:
            self.stop(node, reason)
        return any(k.hook is not None and k.hook(self, node, slot, space, edge) for k in kinds)

    def backward(self, node: int, t: str, space: int, edge: Edge) -> None:
        """``t`` (an output of ``node``) carries the channels: so must ``node``'s inputs, or it is a producer."""
        view, n = self.view, self.view.nodes[node]
        prod = producer_of(view, node)
        if isinstance(prod, Unprunable):
            self.stop(None, f"{prod.where}: {prod.reason}")
        if prod is not None:
            if edge.per != 1:
                self.stop(node, "attention heads produced by a layer directly")
            if prod.channels != self.sizes[space]:
                self.stop(
                    None, f"producer {self.where(node)} has {prod.channels} channels, expected {self.sizes[space]}"
                )
            self.producers[node] = space
            self.params.extend(ParamAt(p, space) for p in prod.params)
            return
        if self._hooks(node, None, space, edge):
            return
        data = [k for k, x in enumerate(n.input) if x and not view.is_const(x)]
        slot = data[0] if len(data) == 1 else 0
        in_edge = replace(input_edge(view, node, edge), tensor=n.input[slot])
        step = flow(view, node, slot, in_edge, self.sizes[space])
        if not isinstance(step, Through) or len(step.outputs) != 1 or not _same(step.outputs[0], edge, t):
            if isinstance(step, Stop):
                self.stop(node, step.reason, step.unknown_op)
            self.stop(node, "channels reach it from its output side")
        self._through(step, space)
        self.join(n.input[slot], space, in_edge, via=node)

    def forward(self, node: int, slot: int, t: str, space: int, edge: Edge) -> None:
        """``t`` (input ``slot`` of ``node``) carries the channels: follow them through ``node``."""
        if self._hooks(node, slot, space, edge):
            return
        step = flow(self.view, node, slot, edge, self.sizes[space])
        if isinstance(step, Stop):
            self.stop(node, step.reason, step.unknown_op)
        if isinstance(step, Consume):
            self.consumers[node] = ConsumerAt(step.consumer, space)
            return
        assert isinstance(step, Through)
        self._through(step, space)
        for e in step.outputs:
            self.join(e.tensor, space, e, via=node)

    def _through(self, step: Through, space: int) -> None:
        self.params.extend(ParamAt(p, space) for p in step.params)
        self.pending.extend(At(e, space) for e in step.edits)
        if step.block > 1:
            if self.block not in (1, step.block) or self.heads:
                self.stop(None, f"grouped convs with {self.block} and {step.block} channels per group")
            self.block = step.block
        if step.heads > 1:
            self.heads_of(step.heads)

    def heads_of(self, size: int) -> None:
        """The atoms are attention heads of ``size`` channels (unless atoms of another size came first)."""
        if self.block not in (1, size) or (self.block > 1 and not self.heads):
            self.stop(None, f"attention heads of {size} channels where atoms have {self.block}")
        self.block, self.heads = size, True

    def repeat(self, kv: int, q: int, heads: int, rep: int) -> bool:
        """Key/value space ``kv``'s ``heads`` heads repeated ``rep`` times in query space ``q`` (``False``: a space
        is repeated twice)."""
        if self.units.setdefault(q, rep) != rep or self.units.get(kv, 1) != 1:
            return False
        self.repeats.append(RepeatAt(kv, q, heads))
        return True

    def size_of(self, node: int, tensor: str, edge: Edge) -> int:
        """Channel count of ``tensor`` (its space's size if it has one, else from shape inference)."""
        if tensor in self.member:
            return self.sizes[self.member[tensor].space]
        shape = self.view.shapes.get(tensor)
        size = shape[edge.axis % (edge.rank or 1)] if shape is not None else None
        if size is None:
            self.stop(node, f"unknown channel count of {tensor!r}")
        return int(size)

    def space_of(self, tensor: str) -> int | None:
        m = self.member.get(tensor)
        return None if m is None else m.space

    def space_for(self, node: int, tensor: str, size: int, edge: Edge) -> int:
        """The space of ``tensor``, or a new one of ``size`` that it joins through ``node``."""
        self.visited.add((node, tensor))
        if tensor in self.member:
            return self.member[tensor].space
        space = self.space(size)
        self.join(tensor, space, edge, via=node)
        return space

    def _joins_producers(self) -> bool:
        """Some Add/Sub joins tensors computed from different producers (a residual connection), not two
        paths from the same ones (a rotary embedding's ``q·cos + rotate_half(q)·sin``)."""
        memo: dict[str, frozenset[int]] = {}

        def sources(t: str) -> frozenset[int]:
            if t not in memo:
                p = self.view.producer.get(t)
                if p is None or p in self.producers:
                    memo[t] = frozenset() if p is None else frozenset([p])
                else:
                    ins = [x for x in self.view.nodes[p].input if x in self.member]
                    memo[t] = frozenset().union(*(sources(x) for x in ins)) if ins else frozenset()
            return memo[t]

        for node in self.adds:
            operands = [x for x in self.view.nodes[node].input if x in self.member]
            if len({sources(x) for x in operands}) > 1:
                return True
        return False

    def _units(self) -> list[int]:
        """Per space: the blocks of :attr:`block` channels one position holds (``rep`` on the query side of
        grouped-query attention, carried along the links between spaces; 1 elsewhere)."""
        unit = dict(self.units)
        changed = True
        while changed:
            changed = False
            for k in self.links:
                a, b = unit.get(k.a), unit.get(k.b)
                if a is not None and b is not None and a != b:
                    self.stop(None, "query heads of grouped-query attention meet other channels")
                if (a is None) != (b is None):
                    unit[k.b if b is None else k.a] = a or b or 1
                    changed = True
        return [unit.get(s, 1) for s in range(len(self.sizes))]

    def _blocks(self) -> tuple[list[int], list[Link]]:
        """Space sizes and links in positions of :meth:`_units` blocks of :attr:`block` channels (every offset
        must be aligned); a key/value repeat links head ``j`` to query unit ``j``."""
        b = self.block
        if b == 1:
            return self.sizes, self.links
        for p in self.pending:
            if p.unblocked is not None:
                self.stop(None, p.unblocked)
        unit = self._units()
        w = [b * u for u in unit]
        if any(s % w[i] for i, s in enumerate(self.sizes)) or any(
            x % w[k.a] for k in self.links for x in (k.start_a, k.start_b, k.length)
        ):
            self.stop(None, f"channel offsets not aligned with the conv groups of {b} channels")
        links = [Link(k.a, k.b, k.start_a // w[k.a], k.start_b // w[k.a], k.length // w[k.a]) for k in self.links]
        links += [Link(r.kv, r.q, 0, 0, r.heads) for r in self.repeats]
        return [s // w[i] for i, s in enumerate(self.sizes)], links

    def atoms(self) -> tuple[int, list[np.ndarray]]:
        """Union-find over all positions (blocks): the atom count and, per space, atom → position (-1 absent)."""
        sizes, links = self._blocks()
        base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        parent = np.arange(int(base[-1]))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = int(parent[i])
            return i

        for k in links:
            for j in range(k.length):
                ra, rb = find(int(base[k.a] + k.start_a + j)), find(int(base[k.b] + k.start_b + j))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        roots = np.array([find(i) for i in range(len(parent))], dtype=np.int64)
        _, first, atom_of = np.unique(roots, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first, kind="stable"), kind="stable")  # atoms by first position
        atom_of = order[atom_of]
        count = len(first)
        index = []
        for s, size in enumerate(sizes):
            idx = np.full(count, -1, dtype=np.int64)
            atoms = atom_of[base[s] : base[s] + size]
            if len(np.unique(atoms)) != size:
                self.stop(
                    None,
                    "the same channels reach one tensor at two positions (a block's input and output both "
                    "concatenated, as in YOLO's C2f with shortcut): not pruned yet",
                )
            idx[atoms] = np.arange(size)
            index.append(idx)
        return count, index

    def group(self) -> ChannelGroup:
        for p in self.pending:
            if (reason := p.conflict(self.view, self.pending)) is not None:
                self.stop(None, reason)
        count, index = self.atoms()
        unit = self._units() if self.block > 1 else [1] * len(self.sizes)
        units = [size // (self.block * u) for size, u in zip(self.sizes, unit, strict=True)]  # sizes in positions
        if any(unit[s] != 1 for p in self.pending if p.per_position for s in p.spaces):
            self.stop(None, "grouped convs, channel pads or splits of grouped-query attention's query heads")
        placed = Placement(index, unit, units, count, self.sizes)
        first = min(self.producers)
        per_atom = sum((index[s] >= 0).astype(np.int64) for s in self.producers.values())
        where = np.stack([index[s] >= 0 for s in range(len(self.sizes))], axis=1)  # (atoms, spaces)
        _, first_seen, region = np.unique(where, axis=0, return_index=True, return_inverse=True)
        region = np.argsort(np.argsort(first_seen, kind="stable"), kind="stable")[region.reshape(-1)]
        consumers = tuple(
            replace(c.consumer, index=placed.ix(c.space), in_channels=units[c.space], unit=unit[c.space])
            for _, c in sorted(self.consumers.items())
        )
        edits = tuple(p.place(placed) for p in self.pending)
        return ChannelGroup(
            id=self.view.node_label(first),
            producer=first,
            channels=count,
            params=tuple(replace(p.param, index=placed.ix(p.space), unit=unit[p.space]) for p in self.params),
            consumers=consumers,
            edits=edits,
            tensors=tuple(self.member),
            producers=tuple(sorted(self.producers)),
            residual=any(getattr(e, "residual", False) for e in edits)
            or (bool(np.max(per_atom) > 1) and self._joins_producers()),
            regions=tuple(map(int, region)) if region.max() > 0 else None,
            block=self.block,
            heads=self.heads,
            scaled=tuple(sorted(self.scaled)),
            repeat=max(unit),
        )


def _seed(view: GraphView, producer: int, found: Produced) -> Tracer:
    tr = Tracer(view)
    space = tr.space(found.channels)
    tr.producers[producer] = space
    tr.params.extend(ParamAt(p, space) for p in found.params)
    tr.visited.add((producer, found.edge.tensor))
    tr.join(found.edge.tensor, space, found.edge)
    return tr


def find_groups(view: GraphView, *, residual: bool = False) -> Coupling:
    """All channel groups of ``view``'s graph, in topological order of their first producers.

    Args:
        residual: prune groups that join several producers (residual streams);
            otherwise they are reported as unpruned.
    """
    groups: list[ChannelGroup] = []
    unprunable: list[Unprunable] = []
    covered: set[int] = set()
    for i in range(len(view.nodes)):
        if i in covered:
            continue
        prod = producer_of(view, i)
        if prod is None:
            continue
        if isinstance(prod, Unprunable):
            unprunable.append(prod)
            continue
        label = view.node_label(i)
        tr = _seed(view, i, prod)
        try:
            tr.run()
            if not tr.consumers:
                raise TraceStop("its channels reach no layer that could be reconstructed")
            g = tr.group()
        except TraceStop as e:
            unprunable.append(Unprunable(label, str(e), e.unknown_op))
            continue
        finally:
            covered.update(tr.producers)
        if g.residual and not residual:
            names = ", ".join(view.node_label(p) for p in g.producers[1:4]) + (", ..." if len(g.producers) > 4 else "")
            unprunable.append(
                Unprunable(
                    label,
                    f"residual stream joining {len(g.producers)} producers ({names}); "
                    "pass --residual stream (or auto) to prune it",
                )
            )
            continue
        groups.append(g)
    for u in unprunable:
        logger.debug("not pruned: %s: %s", u.where, u.reason)
    return Coupling(tuple(groups), tuple(unprunable))
