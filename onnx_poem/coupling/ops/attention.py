"""Attention heads: the coupling rules that make a group's atoms whole heads.

A multi-head attention block, as exporters write it (TorchScript, dynamo, tf2onnx's
``Tensordot`` form; ``T`` tokens, ``H`` heads of ``d`` channels)::

    q = x·Wq + bq → Reshape (N, T, H, d) → Transpose (N, H, T, d) ─┐
    k = x·Wk + bk → Reshape (N, T, H, d) → Transpose (N, H, d, T) ─┴ MatMul (N, H, T, T) → ÷√d, + mask → Softmax ─┐
    v = x·Wv + bv → Reshape (N, T, H, d) → Transpose (N, H, T, d) ────────────────────────────────────────── MatMul ┴
      (N, H, T, d) → Transpose (N, T, H, d) → Reshape (N, T, H·d) → MatMul Wo + bo

Head ``h`` of every tensor in it depends only on head ``h`` of ``q``, ``k`` and ``v``: removing it
removes columns ``h·d … (h+1)·d - 1`` of ``Wq``, ``Wk``, ``Wv`` and their biases, and the same
input columns of ``Wo``, and leaves every other head's context vector exactly as it was.  So the
output projection is the group's consumer, refit by least squares from the kept heads' context
vectors, and its output error is the error of the removal (what POEM and PRO measure).

The generic tracer (:mod:`onnx_poem.coupling.trace`) finds such a group with these op kinds:

* a ``Reshape`` that splits the features into heads moves the channels to the head axis with
  ``Edge.per = d`` (one entry per head) and makes the group's atoms blocks of ``d`` channels; the
  ``Reshape`` that merges them back moves them to the last axis again.  The head count (or ``H·d``)
  is rewritten where it is stored: the shape constant, or the constant piece of the ``Concat`` that
  computes the shape (TorchScript's ``view``), found through :func:`shape_entries`;
* a ``MatMul`` of two computed tensors with the channels on a batch axis passes them to the other
  operand and the output (:func:`batched_matmul`, used by the tracer like a join);
* ``Softmax`` over another axis, and ``Shape`` of a channel tensor whose readers take only other
  dimensions (the exporters' computed reshapes), pass them;
* a computed operand broadcast along the channel axis (the attention mask, ``(N, 1, 1, T)``) does
  not carry the channels (:func:`carries`);
* grouped-query attention repeats each of ``G`` key/value heads for ``r = H / G`` query heads
  (Hugging Face's ``repeat_kv``: ``Unsqueeze`` after the head axis → ``Expand`` to ``r`` copies →
  ``Reshape`` merging the two axes, :func:`repeat_at` / :func:`repeat_ending_at`).  Key/value head
  ``j`` is read by query heads ``j·r … j·r + r - 1`` only, so an atom is one key/value head with its
  ``r`` query heads: ``d`` channels of ``Wk``/``Wv`` and ``r·d`` of ``Wq`` and ``Wo``'s inputs (the
  query side's spaces count *units* of ``r`` heads).  Removing it keeps every other head exact; the
  ``Expand`` shape's ``G`` and the merged ``H`` are rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from onnx import numpy_helper

from ...graph import GraphView
from ..flow import At, Edge, OpKind, Step, Stop, Through, const_axes, only_user, register
from .reshape import ReshapeFix

if TYPE_CHECKING:
    from ..trace import Tracer


@dataclass(frozen=True)
class Entry:
    """One entry of a shape vector: its value (``None``: computed at run time) and the constant that
    stores it (``None``: computed), at ``position`` of that constant."""

    value: int | None
    const: str | None = None
    position: int = 0


def shape_entries(view: GraphView, name: str) -> list[Entry] | None:
    """The entries of shape tensor ``name``: a constant, or a ``Concat`` (axis 0, possibly behind a
    ``Cast``) of constants and computed pieces of known length; ``None`` if neither."""
    value = view.const(name)
    if value is not None:
        return [Entry(int(v), name, i) for i, v in enumerate(np.reshape(value, -1))]
    p = view.producer.get(name)
    if p is None:
        return None
    n = view.nodes[p]
    if n.op_type == "Cast":
        return shape_entries(view, n.input[0])
    flat = view.const(n.input[1]) if n.op_type == "Reshape" and len(n.input) > 1 else None
    if flat is not None and np.reshape(flat, -1).tolist() == [-1] and len(view.shapes.get(n.input[0]) or ()) == 1:
        return shape_entries(view, n.input[0])  # a 1-D shape flattened again
    if n.op_type == "Where":
        return _expand_shape(view, p)
    if n.op_type != "Concat" or int(view.attr(p, "axis", 0)) != 0:
        return None
    out: list[Entry] = []
    for x in n.input:
        v = view.const(x)
        if v is not None:
            out += [Entry(int(e), x, i) for i, e in enumerate(np.reshape(v, -1))]
            continue
        shape = view.shapes.get(x)
        if shape is None or len(shape) != 1 or shape[0] is None:
            return None
        out += [Entry(None)] * int(shape[0])
    return out


def _expand_shape(view: GraphView, node: int) -> list[Entry] | None:
    """TorchScript's ``Expand`` shape ``Where(Equal(s, -1·ones), ones, s)`` (an entry -1 keeps that axis):
    the entries of ``s``, a -1 entry unknown (it becomes 1)."""
    cond, ones, s = view.nodes[node].input[:3]
    c = view.producer.get(cond)
    if c is None or view.nodes[c].op_type != "Equal" or s not in view.nodes[c].input[:2]:
        return None
    other = view.nodes[c].input[1 - list(view.nodes[c].input[:2]).index(s)]
    if not (_filled(view, other, -1) and _filled(view, ones, 1)):
        return None
    entries = shape_entries(view, s)
    return None if entries is None else [Entry(None) if e.value == -1 else e for e in entries]


def _filled(view: GraphView, name: str, value: int) -> bool:
    """Tensor ``name`` is ``value`` everywhere: a constant, ``ConstantOfShape`` with that value, or such a
    tensor times a constant (TorchScript's ``ConstantOfShape(n) · -1``)."""
    v = view.const(name)
    if v is not None:
        return bool(np.all(np.asarray(v) == value))
    p = view.producer.get(name)
    if p is None:
        return False
    n = view.nodes[p]
    if n.op_type == "ConstantOfShape":
        fill = view.attr(p, "value")
        return fill is not None and bool(np.all(numpy_helper.to_array(fill) == value))
    if n.op_type == "Mul":
        for a, b in (n.input[:2], n.input[1::-1]):
            k = view.const(b)
            if k is not None and np.size(k) == 1 and float(np.reshape(k, -1)[0]) != 0:
                scale = float(np.reshape(k, -1)[0])
                return value % scale == 0 and _filled(view, a, int(value / scale))
    return False


@dataclass(frozen=True)
class HeadReshape:
    """A ``Reshape`` between ``(..., H·d)`` and ``(..., H, d)``: ``split`` (features into heads) or not
    (heads merged back); ``entry`` is the shape entry of ``H`` (split) or ``H·d`` (merge), ``inner`` that
    of ``d`` (split only).  ``axis_in`` is the input's features axis (split) or heads axis (merge),
    ``axis_out`` the output's heads axis (split) or features axis (merge).  The axes before them may be
    reshaped too (tf2onnx's dense layer on ``(N·T, E)`` split into ``(N, T, H, d, 1)``) and trailing
    axes of size 1 may come or go."""

    split: bool
    heads: int
    size: int
    in_rank: int
    out_rank: int
    axis_in: int
    axis_out: int
    entry: Entry
    inner: Entry | None = None


def _same_lead(a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))


def _same_elements(a: tuple[int | None, ...], b: tuple[int | None, ...]) -> bool:
    """The leading axes of a split or merge hold the same elements: the same axes, or every size known and
    the same product (a reshape of the leading axes themselves)."""
    if len(a) == len(b):
        return _same_lead(a, b)
    return None not in a and None not in b and int(np.prod(a)) == int(np.prod(b))  # type: ignore[arg-type]


def _strip_ones(shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    k = len(shape)
    while k > 1 and shape[k - 1] == 1:
        k -= 1
    return shape[:k]


def head_reshape(view: GraphView, node: int) -> HeadReshape | None:
    """The head split or merge that Reshape ``node`` performs (from its shapes), or ``None``."""
    n = view.nodes[node]
    a, b = view.shapes.get(n.input[0]), view.shapes.get(n.output[0])
    entries = shape_entries(view, n.input[1]) if len(n.input) > 1 else None
    if not a or not b or entries is None or len(entries) != len(b):
        return None
    aa, bb = _strip_ones(a), _strip_ones(b)
    if len(bb) >= 3 and len(a) >= 2 and _same_elements(a[:-1], bb[:-2]):
        h, d, c = bb[-2], bb[-1], a[-1]
        if h is not None and d is not None and c is not None and h > 1 and h * d == c:
            at = len(bb) - 2
            return HeadReshape(True, int(h), int(d), len(a), len(b), len(a) - 1, at, entries[at], entries[at + 1])
    if len(aa) >= 3 and _same_elements(aa[:-2], bb[:-1]):
        h, d, c = aa[-2], aa[-1], bb[-1]
        if h is not None and d is not None and h > 1 and (c is None or h * d == c):
            at = len(bb) - 1
            return HeadReshape(False, int(h), int(d), len(a), len(b), len(aa) - 2, at, entries[at])
    return None


def _fix(view: GraphView, node: int, entry: Entry, want: int, per: int) -> ReshapeFix | Stop | None:
    """The rewrite of shape entry ``entry`` that must hold ``want`` (``None``: it is ``-1``, inferred)."""
    if entry.value == -1:
        return None
    if entry.value is None or entry.const is None:
        return Stop("head count computed at run time")
    if entry.value != want:
        return Stop(f"shape entry {entry.value} is not the head count {want}")
    if view.const_users(entry.const) != 1:
        return Stop(f"head count constant {entry.const!r} shared by several nodes")
    return ReshapeFix(node, entry.const, entry.position, 1, per=per)


def _reshape(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step | None:
    """Heads split out of the features or merged back (see module docstring); ``None`` (the plain rule of
    :mod:`onnx_poem.coupling.ops.reshape`) for any other Reshape of channels that are not heads."""
    hr = head_reshape(view, node) if slot == 0 and edge.rank is not None else None
    out = view.nodes[node].output[0]
    if hr is not None and edge.rank == hr.in_rank:
        ax = edge.axis % edge.rank
        if hr.split and ax == hr.axis_in and edge.per == 1 and edge.cols == 1 and channels == hr.heads * hr.size:
            inner = hr.inner
            if hr.entry.value == -1 and (inner is None or inner.value != hr.size):
                return Stop("head size computed at run time")
            fix = _fix(view, node, hr.entry, hr.heads, hr.size)
            if isinstance(fix, Stop):
                return fix
            edits = (fix,) if fix is not None else ()
            return Through((Edge(out, hr.axis_out, hr.out_rank, per=hr.size),), edits=edits, heads=hr.size)
        if not hr.split and ax == hr.axis_in and edge.per == hr.size:
            fix = _fix(view, node, hr.entry, hr.heads * hr.size, 1)
            if isinstance(fix, Stop):
                return fix
            return Through((Edge(out, hr.axis_out, hr.out_rank),), edits=(fix,) if fix is not None else ())
    if edge.per != 1:
        kept = _keeps_heads(view, node, edge) if slot == 0 else None
        return kept or Stop("Reshape of attention heads other than merging them back into the features")
    return None


def _kept_axis(a: tuple[int | None, ...], b: tuple[int | None, ...], ax: int) -> int | None:
    """The axis of ``b`` that is axis ``ax`` of ``a`` in a Reshape from ``a`` to ``b`` that keeps it as an axis
    of its own: the same size, the same elements before it (the same axes, or every size known and the same
    product: a unit axis added or dropped before it) and after it; ``None`` if there is none."""
    size = a[ax] if ax < len(a) else None
    if size is None:
        return None
    tail_a = a[ax + 1 :]
    if None in tail_a:
        return None
    for at in range(len(b)):
        if b[at] != size or not _same_elements(a[:ax], b[:at]):
            continue
        tail_b = b[at + 1 :]
        if None not in tail_b and int(np.prod(tail_a)) == int(np.prod(tail_b)):  # type: ignore[arg-type]
            return at
    return None


def _keeps_heads(view: GraphView, node: int, edge: Edge) -> Through | Stop | None:
    """A Reshape that keeps the heads' axis as an axis of its own and reshapes only around it ((N, H, T, 1, d)
    → (N, H, T, d), (N, H, T, T) → (N, H, T, T, 1): tf2onnx's einsum once unmerged by :mod:`onnx_poem.unmerge`;
    (H, T, d) → (1, H, T, d): a fixed batch of 1): the heads move to that axis; a shape entry that stores
    ``H`` is rewritten (:func:`_kept_axis`)."""
    n = view.nodes[node]
    a, b = view.shapes.get(n.input[0]), view.shapes.get(n.output[0])
    entries = shape_entries(view, n.input[1]) if len(n.input) > 1 else None
    if not a or not b or entries is None or len(entries) != len(b) or edge.rank != len(a) or edge.cols != 1:
        return None
    ax = edge.axis % edge.rank
    at = _kept_axis(a, b, ax)
    if at is None:
        return None
    if any(e.value is None or e.value == 0 for e in entries[at + 1 :]):
        return None  # the axes after the heads must not depend on theirs
    if at != ax and any(e.value == 0 for e in entries[:at]):
        return None  # a copied size would be another axis' once the rank changes
    entry = entries[at]
    heads = b[at]
    assert heads is not None  # _kept_axis found it
    fix = None if entry.value == 0 else _fix(view, node, entry, heads, edge.per)
    if isinstance(fix, Stop):
        return fix
    return Through((Edge(n.output[0], at, len(b), per=edge.per),), edits=(fix,) if fix is not None else ())


def _reshape_input(view: GraphView, node: int, out: Edge) -> Edge | None:
    """Backward through a head split: the heads' axis of the output is the features' axis of the input."""
    hr = head_reshape(view, node)
    if hr is None or out.rank is None:
        return None
    ax = out.axis % out.rank
    if out.rank != hr.out_rank:
        return None
    if hr.split and ax == hr.axis_out and out.per == hr.size:
        return Edge(view.nodes[node].input[0], hr.axis_in, hr.in_rank)
    if not hr.split and ax == hr.axis_out and out.per == 1:
        return Edge(view.nodes[node].input[0], hr.axis_in, hr.in_rank, per=hr.size)
    return None


def _reshape_input_heads(view: GraphView, node: int, out: Edge) -> Edge | None:
    """Backward: a head split or merge (:func:`_reshape_input`), or a Reshape that keeps the heads' axis and
    every axis before it (:func:`_keeps_heads` checks the rest)."""
    moved = _reshape_input(view, node, out)
    if moved is not None or out.per == 1 or out.rank is None:
        return moved
    n = view.nodes[node]
    a, b = view.shapes.get(n.input[0]), view.shapes.get(n.output[0])
    if not a or not b or len(b) != out.rank:
        return None
    at = _kept_axis(b, a, out.axis % out.rank)
    return None if at is None else Edge(n.input[0], at, len(a), per=out.per)


def _softmax(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """Normalisation over an axis other than the channel axis (the keys of attention scores).

    Before opset 13 the op flattens every axis from ``axis`` on (default 1): the channel axis must
    come before it."""
    if slot != 0 or edge.rank is None or edge.cols != 1:
        return Stop("Softmax over a tensor of unknown rank or of flattened channels")
    ax = edge.axis % edge.rank
    if view.opset() < 13:
        if ax >= int(view.attr(node, "axis", 1)) % edge.rank:
            return Stop("Softmax (opset < 13) over axes that include the channel axis")
    elif int(view.attr(node, "axis", -1)) % edge.rank == ax:
        return Stop("Softmax over the channel axis")
    return Through((Edge(view.nodes[node].output[0], edge.axis, edge.rank, per=edge.per),))


def _dims_read(view: GraphView, tensor: str, rank: int, first: int) -> set[int] | None:
    """The dimensions of a shape vector ``tensor`` (``first`` = the dimension its entry 0 stands for)
    that its readers take: through ``Cast``, ``Gather`` of constant indices and ``Slice`` of constant
    bounds; ``None`` if a reader could take any."""
    read: set[int] = set()
    for use in view.users(tensor):
        n = view.nodes[use.node]
        if use.slot != 0:
            return None
        if n.op_type == "Cast":
            sub = _dims_read(view, n.output[0], rank, first)
        elif n.op_type == "Gather" and int(view.attr(use.node, "axis", 0)) == 0:
            idx = view.const(n.input[1])
            sub = None if idx is None else {first + int(i) % (rank - first) for i in np.reshape(idx, -1)}
        elif n.op_type == "Slice":
            s, e = view.const(n.input[1]), view.const(n.input[2])
            steps = view.const(n.input[4]) if len(n.input) > 4 and n.input[4] else np.ones(1, np.int64)
            if s is None or e is None or steps is None or np.size(s) != 1 or np.size(e) != 1:
                return None
            if int(np.reshape(steps, -1)[0]) != 1:
                return None
            length = rank - first
            bounds = (int(np.reshape(v, -1)[0]) for v in (s, e))
            lo, hi = (int(np.clip(v if v >= 0 else v + length, 0, length)) for v in bounds)
            sub = {first + i for i in range(lo, hi)}
        else:
            return None
        if sub is None:
            return None
        read |= sub
    return read


def _shape(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    """The shape of a channel tensor read only at other dimensions (the batch and token counts of an
    exporter's computed ``Reshape``) does not change when channels go."""
    if edge.rank is None:
        return Stop("Shape of a tensor of unknown rank")
    start = int(view.attr(node, "start", 0)) % edge.rank if view.attr(node, "start") is not None else 0
    end = view.attr(node, "end")
    end = edge.rank if end is None else (int(end) if int(end) >= 0 else int(end) + edge.rank)
    ax = edge.axis % edge.rank
    if not start <= ax < end:
        return Through(())
    read = _dims_read(view, view.nodes[node].output[0], end, start)
    if read is None or ax in read:
        return Stop("the channel count is read at run time")
    return Through(())


def carries(view: GraphView, tensor: str, edge: Edge) -> bool:
    """Whether operand ``tensor`` of an elementwise op whose other operand carries the channels as
    ``edge`` carries them too: not if it is broadcast along the channel axis (size 1 there or fewer
    dimensions, as an attention mask ``(N, 1, 1, T)`` against scores ``(N, H, T, T)``)."""
    shape = view.shapes.get(tensor)
    if shape is None or edge.rank is None:
        return True
    at = edge.aligned(len(shape))
    return at >= 0 and shape[at] != 1


def batched_einsum(view: GraphView, node: int, edge: Edge) -> tuple[Edge, ...] | Stop:
    """The edges of both operands and the output of an ``Einsum`` of two computed tensors whose channels
    (``edge``, on one of them) sit on an index that every term keeps (tf2onnx's ``aecd,abcd->acbe``: the
    head axis ``c`` of attention's scores), the same index in each."""
    n = view.nodes[node]
    eq = view.attr(node, "equation")
    eq = (eq.decode() if isinstance(eq, bytes) else str(eq or "")).replace(" ", "")
    if "..." in eq or "->" not in eq or len(eq.split("->")[0].split(",")) != 2 or len(n.input) != 2:
        return Stop("Einsum other than two operands with an explicit output")
    left, out = eq.split("->")
    subs = [*left.split(","), out]
    names = [*n.input[:2], n.output[0]]
    if edge.rank is None or edge.cols != 1 or edge.tensor not in names:
        return Stop("Einsum of tensors of unknown shapes")
    own = subs[names.index(edge.tensor)]
    if len(own) != edge.rank:
        return Stop("Einsum of tensors of unknown shapes")
    letter = own[edge.axis % edge.rank]
    if any(letter not in t for t in subs):
        return Stop("channels reach an index the Einsum sums over")
    edges = []
    for x, t in zip(names, subs, strict=True):
        shape = view.shapes.get(x)
        if shape is not None and (len(shape) != len(t) or shape[t.index(letter)] == 1):
            return Stop("Einsum broadcast along the channel axis")
        edges.append(Edge(x, t.index(letter), len(t), per=edge.per))
    return tuple(edges)


def batched_matmul(view: GraphView, node: int, edge: Edge) -> tuple[Edge, ...] | Stop:
    """The edges of both operands and the output of a MatMul of two computed tensors one of which
    (``edge.tensor``, an operand or the output) carries the channels on a batch axis as ``edge``
    (attention's ``q·kᵀ`` and ``p·v`` per head): the same axis counted from the right in each (an
    ``Einsum``: :func:`batched_einsum`)."""
    n = view.nodes[node]
    if n.op_type == "Einsum":
        return batched_einsum(view, node, edge)
    names = [*n.input[:2], n.output[0]]
    if edge.rank is None or edge.cols != 1:
        return Stop("MatMul of two computed tensors of unknown shapes")
    own = view.shapes.get(edge.tensor) or (None,) * edge.rank
    shapes = [own if x == edge.tensor else view.shapes.get(x) for x in names]
    if len(own) != edge.rank or any(sh is None for sh in shapes):
        return Stop("MatMul of two computed tensors of unknown shapes")
    ax = edge.axis % edge.rank
    if ax >= edge.rank - 2:
        return Stop("channels reach the rows or columns of a MatMul of two computed tensors")
    edges = []
    for x, sh in zip(names, shapes, strict=True):
        assert sh is not None
        a = edge.aligned(len(sh))
        if a < 0 or a >= len(sh) - 2 or sh[a] == 1 or (None not in (sh[a], own[ax]) and sh[a] != own[ax]):
            return Stop("MatMul of two computed tensors broadcast along the channel axis")
        edges.append(Edge(x, a, len(sh), per=edge.per))
    return tuple(edges)


@dataclass(frozen=True)
class Repeat:
    """Grouped-query attention's key/value heads repeated for their query heads (module docstring).

    ``nodes`` are the ``Unsqueeze``, ``Expand`` and ``Reshape``; ``source`` holds ``heads`` key/value heads
    of ``size`` channels on ``axis`` (of ``rank``), ``target`` the ``heads·rep`` query-ordered copies;
    ``expand`` is the Expand shape's entry of ``heads``, ``merged`` the Reshape shape's entry of
    ``heads·rep``."""

    nodes: tuple[int, int, int]
    source: str
    target: str
    axis: int
    rank: int
    heads: int
    rep: int
    size: int
    expand: Entry
    merged: Entry


def repeat_at(view: GraphView, node: int, edge: Edge) -> Repeat | None:
    """The key/value head repeat that starts at ``Unsqueeze`` ``node``, whose input carries heads as ``edge``
    (``edge.per`` channels each), or ``None`` if it is not one."""
    n = view.nodes[node]
    if n.op_type != "Unsqueeze" or edge.rank is None or edge.per == 1 or edge.cols != 1:
        return None
    ax, rank = edge.axis % edge.rank, edge.rank
    axes = const_axes(view, node)
    if axes is None or [a % (rank + 1) for a in axes] != [ax + 1]:
        return None
    e = only_user(view, n.output[0], "Expand", slot=0)
    s = None if e is None else only_user(view, view.nodes[e].output[0], "Reshape", slot=0)
    if e is None or s is None:
        return None
    src, mid, out = (view.shapes.get(t) for t in (n.input[0], view.nodes[e].output[0], view.nodes[s].output[0]))
    expand = shape_entries(view, view.nodes[e].input[1])
    merged = shape_entries(view, view.nodes[s].input[1])
    if src is None or mid is None or out is None or expand is None or merged is None:
        return None
    if len(src) != rank or len(mid) != rank + 1 or len(out) != rank or len(expand) != rank + 1 or len(merged) != rank:
        return None
    heads, rep = mid[ax], mid[ax + 1]
    if heads is None or rep is None or rep < 2 or src[ax] not in (None, heads) or out[ax] not in (None, heads * rep):
        return None
    if not _same_lead(src[:ax], out[:ax]) or not _same_lead(src[ax + 1 :], out[ax + 1 :]):
        return None
    return Repeat((node, e, s), n.input[0], view.nodes[s].output[0], ax, rank, int(heads), int(rep), edge.per,
                  expand[ax], merged[ax])  # fmt: skip


def repeat_ending_at(view: GraphView, node: int, edge: Edge) -> Repeat | None:
    """The key/value head repeat whose ``Reshape`` is ``node``, its output carrying heads as ``edge``."""
    n = view.nodes[node]
    e = view.producer.get(n.input[0]) if n.op_type == "Reshape" else None
    if e is None or view.nodes[e].op_type != "Expand" or edge.rank is None:
        return None
    u = view.producer.get(view.nodes[e].input[0])
    if u is None or view.nodes[u].op_type != "Unsqueeze":
        return None
    rp = repeat_at(view, u, Edge(view.nodes[u].input[0], edge.axis % edge.rank, edge.rank, per=edge.per))
    return rp if rp is not None and rp.nodes[2] == node else None


def repeat_fixes(view: GraphView, rp: Repeat) -> tuple[ReshapeFix | None, ReshapeFix | None] | Stop:
    """The rewrites of the Expand shape's key/value head count and the merged query head count (``None``:
    nothing to rewrite, the entry is 1 or -1)."""
    e, s = rp.nodes[1], rp.nodes[2]
    fix_e = None if rp.expand.value == 1 else _fix(view, e, rp.expand, rp.heads, rp.size)
    fix_s = _fix(view, s, rp.merged, rp.heads * rp.rep, rp.size)
    for f in (fix_e, fix_s):
        if isinstance(f, Stop):
            return Stop(f"grouped-query attention: {f.reason}")
    assert not isinstance(fix_e, Stop) and not isinstance(fix_s, Stop)  # for the type checker
    return fix_e, fix_s


def _both_computed(view: GraphView, node: int) -> bool:
    """A MatMul (or two-operand Einsum) of two computed tensors (attention's ``q·kᵀ``, ``p·v``), not a layer."""
    n = view.nodes[node]
    two = n.op_type == "MatMul" or (n.op_type == "Einsum" and len(n.input) == 2)
    return two and not any(view.is_const(x) for x in n.input[:2])


def _batched(tr: Tracer, node: int, slot: int | None, space: int, edge: Edge) -> bool:
    """A MatMul of two computed tensors reached (from either side) with the channels on a batch axis:
    both operands and the output carry them; its MACs scale with the group."""
    if not _both_computed(tr.view, node):
        return False
    edges = batched_matmul(tr.view, node, edge)
    if isinstance(edges, Stop):
        tr.stop(node, edges.reason)
    tr.scaled.add(node)
    for e in edges:
        tr.join(e.tensor, space, e, via=node)
    return True


def _repeat(tr: Tracer, rp: Repeat) -> None:
    """Grouped-query attention: the key/value heads of ``rp.source`` repeated for their query heads in
    ``rp.target``; the query side counts units of ``rp.rep`` heads."""
    u, e, s = rp.nodes
    edge = Edge(rp.source, rp.axis, rp.rank, per=rp.size)
    kv = tr.space_for(u, rp.source, rp.heads * rp.size, edge)
    q = tr.space_for(s, rp.target, rp.heads * rp.rep * rp.size, replace(edge, tensor=rp.target))
    if tr.sizes[kv] != rp.heads * rp.size or tr.sizes[q] != rp.heads * rp.rep * rp.size:
        tr.stop(u, "grouped-query attention of unexpected head counts")
    tr.heads_of(rp.size)
    if not tr.repeat(kv, q, rp.heads, rp.rep):
        tr.stop(u, "key/value heads repeated twice")
    fixes = repeat_fixes(tr.view, rp)
    if isinstance(fixes, Stop):
        tr.stop(e, fixes.reason)
    for fix, space in zip(fixes, (kv, q), strict=True):
        if fix is not None:
            tr.record(At(fix, space))
    tr.visited.update({(e, tr.view.nodes[u].output[0]), (s, tr.view.nodes[e].output[0])})


def _repeat_from(tr: Tracer, node: int, slot: int | None, space: int, edge: Edge) -> bool:
    """Forward into the ``Unsqueeze`` that starts a key/value repeat."""
    rp = repeat_at(tr.view, node, edge) if slot == 0 else None
    if rp is not None:
        _repeat(tr, rp)
    return rp is not None


def _repeat_to(tr: Tracer, node: int, slot: int | None, space: int, edge: Edge) -> bool:
    """Backward into the ``Reshape`` that ends a key/value repeat."""
    rp = repeat_ending_at(tr.view, node, edge) if slot is None else None
    if rp is not None:
        _repeat(tr, rp)
    return rp is not None


register(
    OpKind(
        "attention scores",
        ("MatMul", "Einsum"),
        early=_batched,
        doc="of two computed tensors (q·kᵀ, p·v): attention heads pass on a batch axis",
    )
)
register(
    OpKind(
        "key/value repeat",
        ("Unsqueeze",),
        early=_repeat_from,
        doc="grouped-query attention's key/value repeat: a key/value head and its query heads are one unit",
    )
)
register(
    OpKind(
        "heads reshape",
        ("Reshape",),
        flow=_reshape,
        early=_repeat_to,
        input_edge=_reshape_input_heads,
        heads=True,
        doc="splits the features into attention heads or merges them back: the head count rewritten",
    ),
    before="reshape",
)
register(
    OpKind(
        "softmax",
        ("Softmax", "LogSoftmax"),
        flow=_softmax,
        heads=True,
        doc="over an axis other than the channels' (attention scores): channels pass",
    )
)
register(
    OpKind(
        "shape",
        ("Shape",),
        flow=_shape,
        heads=True,
        doc="read only at other dimensions (exporters' computed reshapes): channels pass",
    )
)
register(
    OpKind(
        "expand",
        ("Expand",),
        heads_reason="grouped-query attention (key/value heads shared by several query heads) is not pruned yet",
        doc="stops attention heads outside a key/value repeat",
    )
)
