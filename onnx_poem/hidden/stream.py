"""Find the residual stream of a transformer: what writes it, the LayerNorms that read it, and the linear
layers that read those LayerNorms.

The stream ``x ∈ R^D`` (features on one axis of every tensor it passes) is the sum of what its *writers*
put in: constants along the features (position embeddings, a class token, biases), the output columns of
linear layers (attention and FFN output projections, a patch-embedding ``Conv``'s output channels, an
embedding table's columns).  In a pre-LN block it is read only by residual ``Add``s and by
``LayerNormalization`` over the features; each LayerNorm's output is read by *readers*: ``MatMul``/``Gemm``
with a constant weight whose rows are the features (Q, K, V, FFN-in, a classifier behind a token ``Gather``).
A post-LN block (BERT, MiniLM) writes a LayerNorm's output into the next residual sum: that ``Add`` input is
*carried* (:attr:`HiddenStream.carried`), the sum before each LayerNorm being a stretch of its own.  A LayerNorm
output read by anything else (a graph output) gets the back-projection :mod:`onnx_poem.hidden.apply` inserts
instead of folding.

The analysis works on the constant-folded model with observed shapes (:class:`onnx_poem.graph.GraphView`);
anything it does not recognise is a value with the reason (:class:`NotSliceable`), never a partial stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..graph import GraphView
from .norms import NormMatch, find_norms

#: ops that pass the features through unchanged on the write side (elementwise identity)
_PASS = ("Identity", "Dropout")


@dataclass(frozen=True)
class Writer:
    """A constant whose ``axis`` holds hidden features written into the stream tensor ``tensor``."""

    name: str
    axis: int
    tensor: str


@dataclass(frozen=True)
class ShapeFix:
    """A shape constant ``name`` (of a ``Reshape`` or ``Expand``) whose entry ``position`` is the hidden size."""

    name: str
    position: int


@dataclass(frozen=True)
class Reader:
    """A linear layer reading a LayerNorm's output: constant ``weight`` whose ``axis`` runs over the features
    (``MatMul``: 0; ``Gemm``: 1 with ``transB``, else 0), ``bias`` its added constant (``None``: none yet)."""

    node: int
    weight: str
    axis: int
    bias: str | None


@dataclass(frozen=True)
class Norm:
    """A normalisation of the stream's features (:class:`onnx_poem.hidden.norms.NormMatch`).

    ``readers``: the linear layers its output reaches (through token ``Gather``s); empty when something else
    reads it, and then ``project`` is set: the output is rebuilt at full width (``n Qᵀ diag(γ) + β``).
    """

    match: NormMatch
    readers: tuple[Reader, ...] = ()
    project: bool = False


@dataclass(frozen=True)
class HiddenStream:
    """The stream of one model (see module docstring).

    Attributes:
        size: ``D``, the number of hidden features.
        tensors: every tensor carrying the stream or a writer's output, with the axis of the features.
        writers: the constants written into the stream.
        fixes: shape constants that hold ``D``.
        norms: the normalisations reading the stream, in node order.
        centred: they are LayerNorms (the writers are then centred), not RMSNorms.
        segment: tensor → the stream tensor a normalisation reads that it flows into (itself for those): the
            stretch of the stream that one rotation covers (:func:`onnx_poem.hidden.apply.slice_hidden`).
        skips: residual ``Add`` inputs that carry one stretch into the next: (node, input slot).
        carried: residual ``Add`` inputs that carry a normalisation's *output* into a stretch (a post-LN block's
            residual: ``h = γ ⊙ n + β`` written into the next sum): (node, input slot, that normalisation's input).
    """

    size: int
    tensors: dict[str, int]
    writers: tuple[Writer, ...]
    fixes: tuple[ShapeFix, ...]
    norms: tuple[Norm, ...]
    centred: bool = True
    segment: dict[str, str] = field(default_factory=dict)
    skips: tuple[tuple[int, int], ...] = ()
    carried: tuple[tuple[int, int, str], ...] = ()


@dataclass(frozen=True)
class NotSliceable:
    """Why the model's hidden size cannot be sliced."""

    reason: str


@dataclass
class _Trace:
    view: GraphView
    size: int
    tensors: dict[str, int] = field(default_factory=dict)
    writers: dict[str, Writer] = field(default_factory=dict)
    fixes: dict[str, ShapeFix] = field(default_factory=dict)
    norm_nodes: set[int] = field(default_factory=set)
    norm_outputs: dict[str, str] = field(default_factory=dict)  # a normalisation's output → its input
    carried: dict[tuple[int, int], str] = field(default_factory=dict)  # (Add node, slot) → the carried norm's input
    todo: list[str] = field(default_factory=list)
    current: str = ""  # the tensor whose writers are being traced

    def rank(self, tensor: str) -> int | None:
        shape = self.view.shapes.get(tensor)
        return len(shape) if shape is not None else None

    def add(self, tensor: str, axis: int) -> str | None:
        """``tensor`` carries the features on ``axis``; a reason when it contradicts what is known."""
        rank = self.rank(tensor)
        if rank is None:
            return f"tensor {tensor} has no known shape"
        axis %= rank
        shape = self.view.shapes[tensor]
        if shape[axis] != self.size:
            return f"tensor {tensor} has {shape[axis]} features where the stream has {self.size}"
        if tensor in self.tensors:
            return None if self.tensors[tensor] == axis else f"tensor {tensor} carries the stream on two axes"
        if tensor in self.view.outputs:
            return f"the stream is the graph output {tensor}"
        self.tensors[tensor] = axis
        self.todo.append(tensor)
        return None

    def writer(self, name: str, axis: int) -> str | None:
        v = self.view.const(name)
        if v is None:
            return f"{name} is not a constant"
        if v.ndim == 0 or v.shape[axis] != self.size:
            return f"constant {name} of shape {v.shape} does not hold the features on axis {axis}"
        if self.view.const_users(name) != 1:
            return f"constant {name} is shared by several nodes"
        self.writers[name] = Writer(name, axis % v.ndim, self.current)
        return None


def find_stream(view: GraphView) -> HiddenStream | NotSliceable:
    """The residual stream of ``view``'s model, or why there is none to slice (see module docstring)."""
    norms = find_norms(view)
    if not norms:
        return NotSliceable("no LayerNorm or RMSNorm over the last axis")
    if len({m.centred for m in norms}) != 1:
        return NotSliceable("the model mixes LayerNorms and RMSNorms")
    sizes = {(view.shapes.get(m.input) or (None,))[-1] for m in norms}
    if len(sizes) != 1 or None in sizes:
        return NotSliceable(f"the normalisations normalise different sizes {sorted(map(str, sizes))}")
    owner = {i: m.label for m in norms for i in m.nodes}  # the normalisations' nodes → their label
    t = _Trace(view, int(sizes.pop()), norm_nodes=set(owner), norm_outputs={m.output: m.input for m in norms})  # type: ignore[arg-type]
    for m in norms:
        if (why := t.add(m.input, -1)) is not None:
            return NotSliceable(why)
    while t.todo:
        tensor = t.todo.pop()
        p = view.producer.get(tensor)
        if p in owner:
            return NotSliceable(
                f"the stream is written by the normalisation {owner[p]} other than through a residual Add"
            )
        t.current = tensor
        why = _backward(t, tensor) or _forward(t, tensor)
        if why is not None:
            return NotSliceable(why)
    read = tuple(_norm(view, m, t.tensors, set(t.carried)) for m in norms)
    writers, fixes = tuple(t.writers.values()), tuple(t.fixes.values())
    segment = _segments(t, [m.input for m in norms])
    if isinstance(segment, NotSliceable):
        return segment
    skips = tuple(
        (use.node, use.slot)
        for tensor in t.tensors
        for use in view.users(tensor)
        if (out := view.nodes[use.node].output[0]) in t.tensors and segment[out] != segment[tensor]
    )
    carried = tuple((node, slot, source) for (node, slot), source in t.carried.items())
    return HiddenStream(t.size, t.tensors, writers, fixes, read, norms[0].centred, segment, skips, carried)


def _segments(t: _Trace, anchors: list[str]) -> dict[str, str] | NotSliceable:
    """Each stream tensor's stretch: the first tensor a normalisation reads that it reaches going forward."""
    view = t.view
    segment = {a: a for a in anchors}
    for tensor in t.tensors:
        path, cur = [], tensor
        while cur not in segment:
            path.append(cur)
            nxt = [view.nodes[u.node].output[0] for u in view.users(cur) if u.node not in t.norm_nodes]
            nxt = [o for o in nxt if o in t.tensors]
            if len(set(nxt)) != 1:
                return NotSliceable(f"stream tensor {cur} reaches {len(set(nxt))} places where one is expected")
            cur = nxt[0]
        for p in path:
            segment[p] = segment[cur]
    return segment


def _backward(t: _Trace, tensor: str) -> str | None:
    """Trace what writes ``tensor``: inputs that carry features join the stream, constants become writers."""
    view = t.view
    axis = t.tensors[tensor]
    p = view.producer.get(tensor)
    if p is None:
        return f"the stream is read from the graph input {tensor}"
    n = view.nodes[p]
    op = n.op_type
    rank = len(view.shapes[tensor])
    if op == "Add":
        for x in n.input:
            r = t.rank(x)
            if r is None:
                return f"tensor {x} has no known shape"
            aligned = axis - rank + r
            if aligned < 0 or view.shapes[x][aligned] == 1:
                return f"{view.node_label(p)} adds a tensor broadcast over the features"
            if x in t.norm_outputs and aligned == r - 1:  # a post-LN residual: a normalisation's output added
                t.carried[(p, list(n.input).index(x))] = t.norm_outputs[x]
                continue
            why = t.writer(x, aligned) if view.is_const(x) else t.add(x, aligned)
            if why is not None:
                return why
        return None
    if op in _PASS or _same_type_cast(view, p):
        return t.add(n.input[0], axis)
    if op == "MatMul" and axis == rank - 1 and view.is_const(n.input[1]):
        return t.writer(n.input[1], 1)
    if op == "Gemm" and axis == 1:
        trans_b = bool(view.attr(p, "transB", 0))
        why = t.writer(n.input[1], 0 if trans_b else 1)
        return why or (t.writer(n.input[2], -1) if len(n.input) > 2 and n.input[2] else None)
    if op == "Conv" and axis == 1:
        why = t.writer(n.input[1], 0)
        return why or (t.writer(n.input[2], 0) if len(n.input) > 2 and n.input[2] else None)
    if op == "Gather" and axis == rank - 1 and int(view.attr(p, "axis", 0)) == 0 and view.is_const(n.input[0]):
        return t.writer(n.input[0], 1)  # an embedding table's columns
    if op == "Concat":
        if int(view.attr(p, "axis", 0)) % rank == axis:
            return f"{view.node_label(p)} concatenates along the features"
        for x in n.input:
            why = t.writer(x, axis) if view.is_const(x) else t.add(x, axis)
            if why is not None:
                return why
        return None
    if op == "Transpose":
        perm = [int(v) for v in view.attr(p, "perm")]
        return t.add(n.input[0], perm[axis])
    if op == "Expand":
        r = t.rank(n.input[0])
        if r is None or axis - rank + r < 0:
            return f"{view.node_label(p)} expands the features"
        why = _shape_entry(t, n.input[1], axis)
        x, aligned = n.input[0], axis - rank + r
        return why or (t.writer(x, aligned) if view.is_const(x) else t.add(x, aligned))
    if op in ("Reshape", "Flatten"):
        return _reshape_back(t, p, tensor, axis)
    return f"the stream is written by {view.node_label(p)} ({op})"


def _sizes_only(view: GraphView, node: int, axis: int, rank: int) -> bool:
    """``Shape`` node ``node`` of a stream tensor is read only for other sizes than the features' (``Gather`` of
    a constant index, or its ``start``/``end`` leave ``axis`` out): slicing does not change what it gives."""
    start = int(view.attr(node, "start", 0)) % rank if view.attr(node, "start") is not None else 0
    end = view.attr(node, "end")
    stop = rank if end is None else (int(end) if int(end) >= 0 else rank + int(end))
    if not start <= axis < stop:
        return True
    for use in view.users(view.nodes[node].output[0]):
        g = view.nodes[use.node]
        index = view.const(g.input[1]) if g.op_type == "Gather" and use.slot == 0 else None
        if index is None or index.size != 1 or int(index.reshape(-1)[0]) % (stop - start) + start == axis:
            return False
    return view.nodes[node].output[0] not in view.outputs


def _same_type_cast(view: GraphView, node: int) -> bool:
    """``node`` is a ``Cast`` to the type its input has (TorchScript's ``.to(float32)`` of a float32 tensor)."""
    n = view.nodes[node]
    if n.op_type != "Cast":
        return False
    dtype = view.dtypes.get(n.input[0])
    return dtype is not None and dtype == view.dtypes.get(n.output[0])


def _shape_entry(t: _Trace, name: str, axis: int) -> str | None:
    """A shape constant's entry for the features: recorded for the rewrite when it is the hidden size."""
    v = t.view.const(name)
    if v is None:
        return None  # computed from the input's shape at run time
    entry = int(v.reshape(-1)[axis])
    if entry == t.size:
        if t.view.const_users(name) != 1:
            return f"shape constant {name} is shared by several nodes"
        t.fixes[name] = ShapeFix(name, axis)
    return None


def _reshape_back(t: _Trace, p: int, tensor: str, axis: int) -> str | None:
    """A Reshape/Flatten keeps the features when the elements before them are the same in and out."""
    view = t.view
    n = view.nodes[p]
    shape_in, shape_out = view.shapes.get(n.input[0]), view.shapes[tensor]
    if not shape_in or None in shape_in or None in shape_out:
        return f"{view.node_label(p)} reshapes tensors of unknown shape"
    before = math.prod(int(d or 0) for d in shape_out[:axis])
    for a in range(len(shape_in)):
        if math.prod(int(d or 0) for d in shape_in[:a]) == before and shape_in[a] == t.size:
            if n.op_type == "Reshape" and (why := _shape_entry(t, n.input[1], axis)) is not None:
                return why
            return t.add(n.input[0], a)
    return f"{view.node_label(p)} splits or merges the features"


def _forward(t: _Trace, tensor: str) -> str | None:
    """Every reader of a stream tensor is a LayerNorm, or a node whose output carries the features on."""
    view = t.view
    axis = t.tensors[tensor]
    rank = len(view.shapes[tensor])
    for use in view.users(tensor):
        n = view.nodes[use.node]
        if use.node in t.norm_nodes:
            continue
        out = n.output[0]
        if (n.op_type in ("Add", *_PASS, "Concat") or _same_type_cast(view, use.node)) and out in view.shapes:
            if (why := t.add(out, axis + len(view.shapes[out]) - rank)) is not None:
                return why
            continue
        if out in t.tensors:  # e.g. the Transpose, Reshape or Expand traced backwards from its output
            continue
        if n.op_type == "Shape" and _sizes_only(view, use.node, axis, rank):
            continue
        return f"the stream is read by {view.node_label(use.node)} ({n.op_type})"
    if tensor in view.captured:
        return f"the stream {tensor} is read inside a subgraph"
    return None


def _norm(view: GraphView, match: NormMatch, tensors: dict[str, int], carried: set[tuple[int, int]]) -> Norm:
    """A normalisation with the linear layers its output reaches (and the residual ``Add``s that carry it into
    the next stretch, ``carried``), or marked for back-projection."""
    readers: list[Reader] = []
    work = [match.output]
    while work:
        tensor = work.pop()
        if tensor in view.outputs or tensor in view.captured or tensor in tensors:
            return Norm(match, project=True)
        for use in view.users(tensor):
            if (use.node, use.slot) in carried:
                continue
            u, op = view.nodes[use.node], view.nodes[use.node].op_type
            rank = len(view.shapes.get(tensor) or ())
            if op == "Gather" and use.slot == 0 and rank and int(view.attr(use.node, "axis", 0)) % rank != rank - 1:
                work.append(u.output[0])  # a token picked (a class token): the features stay last
                continue
            if op == "Shape" and rank and _sizes_only(view, use.node, rank - 1, rank):
                continue
            reader = _reader(view, use.node, use.slot, rank == 2)
            if reader is None:
                return Norm(match, project=True)
            readers.append(reader)
    return Norm(match, tuple(readers))


def _reader(view: GraphView, node: int, slot: int, two_d: bool) -> Reader | None:
    """``node`` as a linear reader of normalised features at its input ``slot``, else ``None``."""
    n = view.nodes[node]
    w = view.const(n.input[1]) if len(n.input) > 1 else None
    if slot != 0 or w is None or w.ndim != 2 or view.const_users(n.input[1]) != 1:
        return None
    if n.op_type == "MatMul":
        users = view.users(n.output[0])
        bias = None
        if len(users) == 1 and n.output[0] not in view.outputs and view.nodes[users[0].node].op_type == "Add":
            other = view.nodes[users[0].node].input[1 - users[0].slot]
            v = view.const(other)
            if v is not None and v.size == w.shape[1] and view.const_users(other) == 1:
                bias = other
        return Reader(node, n.input[1], 0, bias)
    if n.op_type == "Gemm" and two_d and not int(view.attr(node, "transA", 0)):
        if float(view.attr(node, "alpha", 1.0)) != 1.0:
            return None
        trans_b = bool(view.attr(node, "transB", 0))
        c = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if c is not None and (view.const(c) is None or view.const_users(c) != 1):
            return None
        return Reader(node, n.input[1], 1 if trans_b else 0, c)
    return None
