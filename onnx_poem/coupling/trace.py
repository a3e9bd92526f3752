"""Find the prunable channel groups of a graph.

Every Conv (``group == 1``), Gemm and MatMul with a constant weight is a
*producer*.  From its output the channels are followed, forward *and*
backward, through the rules of :mod:`onnx_poem.coupling.rules`, so a group is
a connected set of channel-carrying tensors:

* forward through per-channel ops up to the consumer layers;
* through a binary ``Add``/``Mul``/... of two computed tensors (residual
  joins, ``x·Φ(x)`` GELU), pulling in the other operand and, backward, every
  producer behind it;
* through a channel ``Pad`` (CIFAR option-A shortcut) or ``Concat``, which
  put the channels of one tensor at an offset of another (a new *space*).

Positions of all spaces are merged with union-find into *atoms* (the unit
pruned); each member records ``index``: atom → its position.  If any path
reaches an op with no rule, a graph input or a graph output, the whole group
is left unpruned and the reason recorded as an :class:`Unprunable`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from ..graph import GraphView
from .attention import Repeat, batched_matmul, carries, repeat_at, repeat_ending_at, repeat_fixes
from .groups import (
    ChannelGroup,
    Consumer,
    Coupling,
    Grouped,
    PadFix,
    ParamSlice,
    RangeFix,
    ReshapeFix,
    ShuffleFix,
    Unprunable,
)
from .rules import (
    PER_AWARE,
    RULES,
    Consume,
    Edge,
    Shuffle,
    Stop,
    Through,
    channel_shuffle,
    input_edge,
    shuffle_ending_at,
)

logger = logging.getLogger(__name__)

#: binary elementwise ops through which channels pass when both operands carry them
JOINABLE = ("Add", "Sub", "Mul", "Div", "Max", "Min")


#: layers of quantized models (QOperator format), reported with :data:`QUANTIZED_HINT`
QUANTIZED_LAYERS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat")
QUANTIZED_HINT = "quantized models are not pruned; prune the float model, then quantize it"


class _Stop(Exception):
    """Internal: the component cannot be pruned (the message is the reason)."""


def _same(a: Edge, b: Edge, tensor: str) -> bool:
    """``a`` is ``b`` on ``tensor`` (axes compared modulo the rank)."""
    r = a.rank or 1
    return (a.tensor, a.axis % r, a.rank, a.cols, a.per) == (tensor, b.axis % (b.rank or 1), b.rank, b.cols, b.per)


def _aligned(view: GraphView, tensor: str, edge: Edge) -> Edge:
    """``edge`` moved to ``tensor``, an operand or result of a broadcasting op of another rank (axes
    aligned from the right); the same axis where the rank is not known."""
    shape = view.shapes.get(tensor)
    if shape is None or edge.rank is None or len(shape) == edge.rank:
        return replace(edge, tensor=tensor)
    return replace(edge, tensor=tensor, axis=edge.aligned(len(shape)), rank=len(shape))


def _both_computed(view: GraphView, node: int) -> bool:
    """A MatMul (or two-operand Einsum) of two computed tensors (attention's ``q·kᵀ``, ``p·v``), not a layer."""
    n = view.nodes[node]
    two = n.op_type == "MatMul" or (n.op_type == "Einsum" and len(n.input) == 2)
    return two and not any(view.is_const(x) for x in n.input[:2])


def _producer(view: GraphView, i: int) -> tuple[int, list[ParamSlice], Edge] | Unprunable | None:
    """Channels, sliced constants and output edge of producer node ``i`` (``None``: not a layer)."""
    n = view.nodes[i]
    label = view.node_label(i)
    if n.op_type in QUANTIZED_LAYERS:
        return Unprunable(label, f"quantized layer ({n.op_type}): {QUANTIZED_HINT}")
    if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return None
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
        return int(w.shape[1]), params, Edge(out, 1, rank or w.ndim)
    if n.op_type == "Conv":
        group = int(view.attr(i, "group", 1))
        if group != 1:
            return None  # depthwise or grouped: carried by the group of its input (rules._conv)
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
            if c.size == channels and view.const_users(n.input[2]) != 1:
                return Unprunable(label, "Gemm bias shared by several nodes")
            if c.size == channels:
                params.append(ParamSlice(n.input[2], c.ndim - 1))
            elif c.size != 1:
                return Unprunable(label, f"Gemm bias of shape {c.shape} is not per-channel")
        return channels, params, Edge(out, 1, 2)
    return int(w.shape[1]), [ParamSlice(n.input[1], 1)], Edge(out, (rank or 2) - 1, rank)


@dataclass(frozen=True)
class Link:
    """Positions ``start_a … start_a + length - 1`` of space ``a`` are positions ``start_b …`` of space ``b``."""

    a: int
    b: int
    start_a: int
    start_b: int
    length: int


@dataclass(frozen=True)
class _GroupedAt:
    """A grouped conv carried by the group, its channels in ``space``."""

    node: int
    space: int
    per_group: int


@dataclass(frozen=True)
class _PadAt:
    """A channel ``Pad`` (constant ``pads``) whose output is ``space``: ``before``/``after`` channels padded."""

    node: int
    pads: str
    axis: int
    rank: int
    space: int
    before: int
    after: int


@dataclass(frozen=True)
class _RangeAt:
    """A channel ``Split``/``Slice`` of ``space`` into ``(start, length)`` ``parts``; ``entry``: see RangeFix."""

    node: int
    space: int
    parts: tuple[tuple[int, int], ...]
    entry: int


@dataclass(frozen=True)
class _ShuffleAt:
    """A channel shuffle (its three ``nodes``) from space ``source`` to space ``target``."""

    nodes: tuple[int, int, int]
    source: int
    target: int


@dataclass
class _Component:
    """Breadth-first construction of one channel group (see module docstring)."""

    view: GraphView
    sizes: list[int] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    member: dict[str, tuple[int, Edge]] = field(default_factory=dict)
    params: list[tuple[ParamSlice, int]] = field(default_factory=list)
    consumers: dict[int, tuple[Consumer, int]] = field(default_factory=dict)
    producers: dict[int, int] = field(default_factory=dict)
    reshapes: list[tuple[ReshapeFix, int]] = field(default_factory=list)
    grouped: list[_GroupedAt] = field(default_factory=list)
    block: int = 1  # channels per atom: a grouped conv's per_group (see ChannelGroup.block)
    pads: list[_PadAt] = field(default_factory=list)
    queue: list[str] = field(default_factory=list)
    visited: set[tuple[int, str]] = field(default_factory=set)
    adds: set[int] = field(default_factory=set)  # Add/Sub nodes joining two computed tensors
    ranges: list[_RangeAt] = field(default_factory=list)
    shuffles: list[_ShuffleAt] = field(default_factory=list)
    heads: bool = False  # the atoms are attention heads (see ChannelGroup.heads)
    scaled: set[int] = field(default_factory=set)  # MatMuls of two computed operands the channels pass
    units: dict[int, int] = field(default_factory=dict)  # space → atoms' blocks per position (query side of GQA)
    repeats: list[tuple[int, int, int]] = field(default_factory=list)  # (key/value space, query space, heads)

    def space(self, size: int) -> int:
        self.sizes.append(size)
        return len(self.sizes) - 1

    def join(self, tensor: str, space: int, edge: Edge, via: int | None = None) -> None:
        """Put ``tensor`` (carrying the channels as ``edge`` says) into ``space``, reached through node ``via``."""
        if via is not None:
            self.visited.add((via, tensor))
        edge = replace(edge, tensor=tensor)
        if tensor in self.member:
            other, old = self.member[tensor]
            if other != space:
                if self.sizes[other] != self.sizes[space]:
                    raise _Stop(
                        f"tensor {tensor!r} is reached with {self.sizes[other]} and {self.sizes[space]} channels"
                    )
                self.links.append(Link(other, space, 0, 0, self.sizes[space]))
            if (old.axis % (old.rank or 1), old.cols, old.per) != (edge.axis % (edge.rank or 1), edge.cols, edge.per):
                raise _Stop(f"tensor {tensor!r} carries the channels on two different axes")
            return
        self.member[tensor] = (space, edge)
        self.queue.append(tensor)

    def run(self) -> None:
        while self.queue:
            t = self.queue.pop(0)
            space, edge = self.member[t]
            if t in self.view.outputs:
                raise _Stop(f"channels reach graph output {t!r}")
            if t in self.view.captured:
                raise _Stop(f"tensor {t!r} is read inside a control-flow subgraph (If/Loop/Scan)")
            p = self.view.producer.get(t)
            if p is None:
                raise _Stop(f"channels come from graph input {t!r}")
            if (p, t) not in self.visited:
                self.visited.add((p, t))
                self.backward(p, t, space, edge)
            for use in self.view.users(t):
                if (use.node, t) not in self.visited:
                    self.visited.add((use.node, t))
                    self.forward(use.node, use.slot, t, space, edge)

    def _where(self, node: int) -> str:
        return f"{self.view.node_label(node)} ({self.view.nodes[node].op_type})"

    def _channel_pads(self, node: int, edge: Edge) -> tuple[str, int, int] | None:
        """(pads constant, before, after) of a ``Pad`` on the channel axis; ``None`` if it pads other axes only."""
        n = self.view.nodes[node]
        pads = self.view.const(n.input[1]) if len(n.input) > 1 else None
        if pads is None or edge.rank is None or pads.size != 2 * edge.rank or (len(n.input) > 3 and n.input[3]):
            raise _Stop(f"stopped at {self._where(node)}: computed or axis-restricted pads")
        if len(n.input) > 2 and n.input[2] and float(np.asarray(self.view.const(n.input[2])).reshape(-1)[0]) != 0:
            raise _Stop(f"stopped at {self._where(node)}: non-zero pad value")
        ax = edge.axis % edge.rank
        before, after = int(pads[ax]), int(pads[ax + edge.rank])
        if before < 0 or after < 0:
            raise _Stop(f"stopped at {self._where(node)}: negative pads")
        return (n.input[1], before, after) if before or after else None

    def backward(self, node: int, t: str, space: int, edge: Edge) -> None:
        """``t`` (an output of ``node``) carries the channels: so must ``node``'s inputs, or it is a producer."""
        view, n = self.view, self.view.nodes[node]
        prod = _producer(view, node)
        if isinstance(prod, Unprunable):
            raise _Stop(f"{prod.where}: {prod.reason}")
        if prod is not None:
            channels, params, _ = prod
            if edge.per != 1:
                raise _Stop(f"stopped at {self._where(node)}: attention heads produced by a layer directly")
            if channels != self.sizes[space]:
                raise _Stop(f"producer {self._where(node)} has {channels} channels, expected {self.sizes[space]}")
            self.producers[node] = space
            self.params.extend((p, space) for p in params)
            return
        if n.op_type in JOINABLE and not any(view.is_const(x) for x in n.input):
            joined = [x for x in n.input if carries(view, x, edge)]  # a broadcast operand (mask) carries none
            if not joined:
                raise _Stop(f"stopped at {self._where(node)}: no operand carries the channels")
            if n.op_type in ("Add", "Sub") and len(joined) > 1:
                self.adds.add(node)
            for x in joined:
                self.join(x, space, _aligned(view, x, edge), via=node)
            return
        if _both_computed(view, node):
            self._batched(node, space, edge)
            return
        if n.op_type == "Reshape" and (rp := repeat_ending_at(view, node, edge)) is not None:
            self._repeat(rp)
            return
        self._heads_pass(node, edge)
        if n.op_type == "Pad" and (cp := self._channel_pads(node, edge)) is not None:
            self._pad(node, *cp, edge)
            return
        if n.op_type == "Concat":
            self._concat(node, edge)
            return
        if n.op_type in ("Split", "Slice") and (cut := self._channel_parts(node, edge)) is not None:
            self._split(node, *cut, edge)
            return
        if n.op_type == "Reshape" and (sh := shuffle_ending_at(view, node, edge)) is not None:
            self._shuffle(sh, edge)
            return
        data = [k for k, x in enumerate(n.input) if x and not view.is_const(x)]
        slot = data[0] if len(data) == 1 else 0
        in_edge = replace(input_edge(view, node, edge), tensor=n.input[slot])
        rule = RULES.get(n.op_type)
        step = rule(view, node, slot, in_edge, self.sizes[space]) if rule else Stop(f"op {n.op_type} is not supported")
        if not isinstance(step, Through) or len(step.outputs) != 1 or not _same(step.outputs[0], edge, t):
            reason = step.reason if isinstance(step, Stop) else "channels reach it from its output side"
            raise _Stop(f"stopped at {self._where(node)}: {reason}")
        self._through(node, step, space)
        self.join(n.input[slot], space, in_edge, via=node)

    def forward(self, node: int, slot: int, t: str, space: int, edge: Edge) -> None:
        """``t`` (input ``slot`` of ``node``) carries the channels: follow them through ``node``."""
        view, n = self.view, self.view.nodes[node]
        if n.op_type in JOINABLE and len(n.input) == 2 and not any(view.is_const(x) for x in n.input):
            other = n.input[1 - slot]
            if carries(view, other, edge):  # else broadcast along the channels (an attention mask)
                if n.op_type in ("Add", "Sub"):
                    self.adds.add(node)
                self.join(other, space, _aligned(view, other, edge), via=node)
            else:
                self.visited.add((node, other))
            self.join(n.output[0], space, _aligned(view, n.output[0], edge), via=node)
            return
        if _both_computed(view, node):
            self._batched(node, space, edge)
            return
        if n.op_type == "Unsqueeze" and slot == 0 and (rp := repeat_at(view, node, edge)) is not None:
            self._repeat(rp)
            return
        self._heads_pass(node, edge)
        if n.op_type == "Pad" and slot == 0 and (cp := self._channel_pads(node, edge)) is not None:
            self._pad(node, *cp, edge)
            return
        if n.op_type == "Concat":
            self._concat(node, edge)
            return
        if n.op_type in ("Split", "Slice") and slot == 0 and (cut := self._channel_parts(node, edge)) is not None:
            self._split(node, *cut, edge)
            return
        if n.op_type == "Reshape" and slot == 0 and (sh := channel_shuffle(view, node, edge)) is not None:
            self._shuffle(sh, edge)
            return
        rule = RULES.get(n.op_type)
        step = rule(view, node, slot, edge, self.sizes[space]) if rule else Stop(f"op {n.op_type} is not supported")
        if isinstance(step, Stop):
            raise _Stop(f"stopped at {self._where(node)}: {step.reason}")
        if isinstance(step, Consume):
            self.consumers[node] = (step.consumer, space)
            return
        assert isinstance(step, Through)
        self._through(node, step, space)
        for e in step.outputs:
            self.join(e.tensor, space, e, via=node)

    def _batched(self, node: int, space: int, edge: Edge) -> None:
        """A MatMul of two computed tensors reached (from either side) with the channels on a batch axis:
        both operands and the output carry them; its MACs scale with the group."""
        edges = batched_matmul(self.view, node, edge)
        if isinstance(edges, Stop):
            raise _Stop(f"stopped at {self._where(node)}: {edges.reason}")
        self.scaled.add(node)
        for e in edges:
            self.join(e.tensor, space, e, via=node)

    def _repeat(self, rp: Repeat) -> None:
        """Grouped-query attention: the key/value heads of ``rp.source`` repeated for their query heads in
        ``rp.target``; the query side counts units of ``rp.rep`` heads (:meth:`_blocks`)."""
        u, e, s = rp.nodes
        edge = Edge(rp.source, rp.axis, rp.rank, per=rp.size)
        kv = self._space_for(u, rp.source, rp.heads * rp.size, edge)
        q = self._space_for(s, rp.target, rp.heads * rp.rep * rp.size, replace(edge, tensor=rp.target))
        if self.sizes[kv] != rp.heads * rp.size or self.sizes[q] != rp.heads * rp.rep * rp.size:
            raise _Stop(f"stopped at {self._where(u)}: grouped-query attention of unexpected head counts")
        self._heads_of(rp.size)
        if self.units.setdefault(q, rp.rep) != rp.rep or self.units.get(kv, 1) != 1:
            raise _Stop(f"stopped at {self._where(u)}: key/value heads repeated twice")
        self.repeats.append((kv, q, rp.heads))
        fixes = repeat_fixes(self.view, rp)
        if isinstance(fixes, Stop):
            raise _Stop(f"stopped at {self._where(e)}: {fixes.reason}")
        for fix, space in zip(fixes, (kv, q), strict=True):
            if fix is not None:
                self.reshapes.append((fix, space))
        self.visited.update({(e, self.view.nodes[u].output[0]), (s, self.view.nodes[e].output[0])})

    def _heads_pass(self, node: int, edge: Edge) -> None:
        """Stop where attention heads (``edge.per > 1``) reach an op whose rule does not keep them (Concat,
        Slice and Split check for themselves: along other axes they pass, as rotary embeddings need)."""
        op = self.view.nodes[node].op_type
        if edge.per == 1 or op in PER_AWARE or op in ("Concat", "Slice", "Split"):
            return
        if op == "Expand":
            raise _Stop(
                f"stopped at {self._where(node)}: grouped-query attention (key/value heads shared by several "
                "query heads) is not pruned yet"
            )
        raise _Stop(f"stopped at {self._where(node)}: attention heads reach a {op}")

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

    def _through(self, node: int, step: Through, space: int) -> None:
        self.params.extend((p, space) for p in step.params)
        if step.reshape is not None:
            self.reshapes.append((step.reshape, space))
        if step.grouped is not None:
            self.grouped.append(_GroupedAt(step.grouped, space, step.per_group))
            if step.per_group > 1:
                if self.block not in (1, step.per_group) or self.heads:
                    raise _Stop(f"grouped convs with {self.block} and {step.per_group} channels per group")
                self.block = step.per_group
        if step.heads > 1:
            self._heads_of(step.heads)

    def _heads_of(self, size: int) -> None:
        """The atoms are attention heads of ``size`` channels (unless atoms of another size came first)."""
        if self.block not in (1, size) or (self.block > 1 and not self.heads):
            raise _Stop(f"attention heads of {size} channels where atoms have {self.block}")
        self.block, self.heads = size, True

    def _size_of(self, node: int, tensor: str, edge: Edge) -> int:
        """Channel count of ``tensor`` (its space's size if it has one, else from shape inference)."""
        if tensor in self.member:
            return self.sizes[self.member[tensor][0]]
        shape = self.view.shapes.get(tensor)
        size = shape[edge.axis % (edge.rank or 1)] if shape is not None else None
        if size is None:
            raise _Stop(f"stopped at {self._where(node)}: unknown channel count of {tensor!r}")
        return int(size)

    def _space_for(self, node: int, tensor: str, size: int, edge: Edge) -> int:
        """The space of ``tensor``, or a new one of ``size`` that it joins through ``node``."""
        self.visited.add((node, tensor))
        if tensor in self.member:
            return self.member[tensor][0]
        space = self.space(size)
        self.join(tensor, space, edge, via=node)
        return space

    def _pad(self, node: int, name: str, before: int, after: int, edge: Edge) -> None:
        """Channel ``Pad``: input channel i is output channel ``i + before``."""
        n = self.view.nodes[node]
        if n.input[0] in self.member:
            inner = self._space_for(node, n.input[0], 0, edge)
            outer = self._space_for(node, n.output[0], self.sizes[inner] + before + after, edge)
        else:
            outer = self._space_for(node, n.output[0], 0, edge)
            inner = self._space_for(node, n.input[0], self.sizes[outer] - before - after, edge)
        self.links.append(Link(inner, outer, 0, before, self.sizes[inner]))
        self.pads.append(_PadAt(node, name, edge.axis, edge.rank or 0, outer, before, after))

    def _concat(self, node: int, edge: Edge) -> None:
        """Channel ``Concat``: input k occupies positions ``offset_k …`` of the output."""
        view, n = self.view, self.view.nodes[node]
        rank = edge.rank or 0
        if edge.cols != 1 or not rank:
            raise _Stop(f"stopped at {self._where(node)}: Concat of flattened channels or of unknown rank")
        if int(view.attr(node, "axis", 0)) % rank != edge.axis % rank:
            # along another axis (tokens, a rotary embedding's halves): every input carries the same channels
            if any(view.is_const(x) for x in n.input):
                raise _Stop(f"stopped at {self._where(node)}: Concat of a constant along another axis")
            space = self.member[next(x for x in [*n.input, n.output[0]] if x in self.member)][0]
            for x in [*n.input, n.output[0]]:
                self.join(x, space, edge, via=node)
            return
        if edge.per != 1:
            raise _Stop(f"stopped at {self._where(node)}: Concat of attention heads")
        sizes = [self._size_of(node, x, edge) for x in n.input]
        out_space = self._space_for(node, n.output[0], sum(sizes), edge)
        offset = 0
        for x, size in zip(n.input, sizes, strict=True):
            self.links.append(Link(self._space_for(node, x, size, edge), out_space, 0, offset, size))
            offset += size

    def _channel_parts(self, node: int, edge: Edge) -> tuple[list[tuple[int, int]], int] | None:
        """``(start, length)`` of each output of a channel ``Split``/``Slice`` and the position of the
        channel axis among a Slice's ``axes``; ``None`` if it cuts other axes only."""
        view, n = self.view, self.view.nodes[node]
        rank = edge.rank or 0
        if not rank or edge.cols != 1:
            raise _Stop(f"stopped at {self._where(node)}: unknown rank")
        ax = edge.axis % rank
        shape = view.shapes.get(n.input[0])
        total = shape[ax] if shape is not None else None
        if n.op_type == "Split":
            if int(view.attr(node, "axis", 0)) % rank != ax:
                return None
            found = [view.shapes.get(o, (None,) * rank)[ax] for o in n.output]
            sizes = [int(v) for v in found if v is not None]
            if len(sizes) != len(found):
                raise _Stop(f"stopped at {self._where(node)}: unknown split sizes")
            offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            return [(int(a), int(b)) for a, b in zip(offsets, sizes, strict=True)], 0
        starts, ends = view.const(n.input[1]), view.const(n.input[2])
        if starts is None or ends is None:
            raise _Stop(f"stopped at {self._where(node)}: Slice with computed parameters")
        axes: np.ndarray | None = np.arange(np.size(starts))
        steps: np.ndarray | None = np.ones(np.size(starts), np.int64)
        if len(n.input) > 3 and n.input[3]:
            axes = view.const(n.input[3])
        if len(n.input) > 4 and n.input[4]:
            steps = view.const(n.input[4])
        if starts is None or ends is None or axes is None or steps is None:
            raise _Stop(f"stopped at {self._where(node)}: Slice with computed parameters")
        hit = [k for k, a in enumerate(np.reshape(axes, -1)) if int(a) % rank == ax]
        if not hit:
            return None
        k = hit[0]
        if view.const_users(n.input[1]) != 1 or view.const_users(n.input[2]) != 1:
            raise _Stop(f"stopped at {self._where(node)}: Slice bounds shared by several nodes")
        if int(np.reshape(steps, -1)[k]) != 1 or total is None:
            raise _Stop(f"stopped at {self._where(node)}: strided or unsized channel Slice")
        a, b = (
            int(np.clip(v if v >= 0 else v + total, 0, total))
            for v in (np.reshape(starts, -1)[k], np.reshape(ends, -1)[k])
        )
        return [(a, max(b - a, 0))], k

    def _split(self, node: int, parts: list[tuple[int, int]], entry: int, edge: Edge) -> None:
        """Channel ``Split``/``Slice``: output k holds input positions ``start_k …``."""
        n = self.view.nodes[node]
        if edge.per != 1:
            raise _Stop(f"stopped at {self._where(node)}: Split or Slice of attention heads")
        source = n.input[0]
        in_space = self._space_for(node, source, self._size_of(node, source, edge), edge)
        for out, (start, length) in zip(n.output, parts, strict=True):
            self.links.append(Link(self._space_for(node, out, length, edge), in_space, 0, start, length))
        self.ranges.append(_RangeAt(node, in_space, tuple(parts), entry))

    def _shuffle(self, sh: Shuffle, edge: Edge) -> None:
        """Channel shuffle: input channel ``c`` is output channel :meth:`Shuffle.target` ``(c)``."""
        source, target = self.view.nodes[sh.nodes[0]].input[0], self.view.nodes[sh.nodes[2]].output[0]
        inner = self._space_for(sh.nodes[0], source, sh.channels, Edge(source, 1, 4))
        outer = self._space_for(sh.nodes[2], target, sh.channels, Edge(target, 1, 4))
        if self.sizes[inner] != sh.channels or self.sizes[outer] != sh.channels:
            raise _Stop(f"stopped at {self._where(sh.nodes[0])}: shuffle of {sh.channels} channels")
        self.links.extend(Link(inner, outer, c, sh.target(c), 1) for c in range(sh.channels))
        self.shuffles.append(_ShuffleAt(sh.nodes, inner, outer))

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
                    raise _Stop("query heads of grouped-query attention meet other channels")
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
        if self.shuffles:
            raise _Stop("a channel shuffle inside a group pruned by whole conv groups")
        unit = self._units()
        w = [b * u for u in unit]
        if any(s % w[i] for i, s in enumerate(self.sizes)) or any(
            x % w[k.a] for k in self.links for x in (k.start_a, k.start_b, k.length)
        ):
            raise _Stop(f"channel offsets not aligned with the conv groups of {b} channels")
        links = [Link(k.a, k.b, k.start_a // w[k.a], k.start_b // w[k.a], k.length // w[k.a]) for k in self.links]
        links += [Link(kv, q, 0, 0, heads) for kv, q, heads in self.repeats]
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
                raise _Stop(
                    "the same channels reach one tensor at two positions (a block's input and output both "
                    "concatenated, as in YOLO's C2f with shortcut): not pruned yet"
                )
            idx[atoms] = np.arange(size)
            index.append(idx)
        return count, index

    def group(self) -> ChannelGroup:
        fixed = {r.node for r, _ in self.reshapes}
        for r, _ in self.reshapes:  # a computed shape read elsewhere too would change there as well
            shape = self.view.nodes[r.node].input[1]
            if not self.view.is_const(shape) and any(u.node not in fixed for u in self.view.users(shape)):
                raise _Stop(f"stopped at {self._where(r.node)}: its shape is computed for other nodes too")
        count, index = self.atoms()
        unit = self._units() if self.block > 1 else [1] * len(self.sizes)
        units = [size // (self.block * u) for size, u in zip(self.sizes, unit, strict=True)]  # sizes in positions
        if any(unit[s] != 1 for s in [gr.space for gr in self.grouped] + [p.space for p in self.pads]
               + [r.space for r in self.ranges]):  # fmt: skip
            raise _Stop("grouped convs, channel pads or splits of grouped-query attention's query heads")

        def ix(space: int) -> tuple[int, ...] | None:
            idx = index[space]
            return None if units[space] == count and (idx == np.arange(count)).all() else tuple(map(int, idx))

        def ix_all(space: int) -> tuple[int, ...]:
            return tuple(map(int, index[space]))

        first = min(self.producers)
        per_atom = sum((index[s] >= 0).astype(np.int64) for s in self.producers.values())
        where = np.stack([index[s] >= 0 for s in range(len(self.sizes))], axis=1)  # (atoms, spaces)
        _, first_seen, region = np.unique(where, axis=0, return_index=True, return_inverse=True)
        region = np.argsort(np.argsort(first_seen, kind="stable"), kind="stable")[region.reshape(-1)]
        consumers = tuple(
            replace(c, index=ix(s), in_channels=units[s], unit=unit[s]) for _, (c, s) in sorted(self.consumers.items())
        )
        return ChannelGroup(
            id=self.view.node_label(first),
            producer=first,
            channels=count,
            params=tuple(replace(p, index=ix(s), unit=unit[s]) for p, s in self.params),
            consumers=consumers,
            reshapes=tuple(replace(r, index=ix(s), unit=unit[s]) for r, s in self.reshapes),
            grouped=tuple(Grouped(gr.node, ix(gr.space), gr.per_group) for gr in self.grouped),
            tensors=tuple(self.member),
            producers=tuple(sorted(self.producers)),
            pads=tuple(
                PadFix(p.node, p.pads, p.axis, p.rank, ix_all(p.space), p.before, p.after, self.sizes[p.space])
                for p in self.pads
            ),
            residual=bool(self.pads) or (bool(np.max(per_atom) > 1) and self._joins_producers()),
            regions=tuple(map(int, region)) if region.max() > 0 else None,
            ranges=tuple(RangeFix(r.node, tuple(map(int, index[r.space])), r.parts, r.entry) for r in self.ranges),
            block=self.block,
            shuffles=tuple(
                ShuffleFix(sh.nodes, tuple(map(int, index[sh.source])), tuple(map(int, index[sh.target])))
                for sh in self.shuffles
            ),
            heads=self.heads,
            scaled=tuple(sorted(self.scaled)),
            repeat=max(unit),
        )


def _seed(view: GraphView, producer: int, channels: int, params: list[ParamSlice], edge: Edge) -> _Component:
    comp = _Component(view)
    space = comp.space(channels)
    comp.producers[producer] = space
    comp.params.extend((p, space) for p in params)
    comp.visited.add((producer, edge.tensor))
    comp.join(edge.tensor, space, edge)
    return comp


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
        prod = _producer(view, i)
        if prod is None:
            continue
        if isinstance(prod, Unprunable):
            unprunable.append(prod)
            continue
        channels, params, edge = prod
        label = view.node_label(i)
        comp = _seed(view, i, channels, params, edge)
        try:
            comp.run()
            if not comp.consumers:
                raise _Stop("its channels reach no layer that could be reconstructed")
            g = comp.group()
        except _Stop as e:
            unprunable.append(Unprunable(label, str(e)))
            continue
        finally:
            covered.update(comp.producers)
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
