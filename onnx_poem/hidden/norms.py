"""Recognise the normalisations that read a transformer's residual stream, fused or decomposed.

* ``LayerNormalization`` over the last axis (opset 17);
* a decomposed LayerNorm (older opsets): ``d = x − ReduceMean(x)``, ``d / Sqrt(ReduceMean(d²) + ε)``;
* a decomposed RMSNorm (LLaMA-style): ``x / Sqrt(ReduceMean(x²) + ε)`` (``x`` possibly through a ``Cast``);

the division written as ``Div(d, s)``, ``Mul(d, Div(1, s))`` or ``Mul(d, Reciprocal(s))``, followed by the scale
``Mul(γ, ·)`` (an optional ``Cast`` before it) and, for a LayerNorm, an optional bias ``Add(·, β)``.  A match
is every node of the pattern (the rewrite replaces them all) with ``ε``, ``γ`` and ``β``; the squares may be
``Pow(·, 2)`` or ``Mul(·, ·)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import GraphView


@dataclass(frozen=True)
class NormMatch:
    """One normalisation: ``nodes`` (all of the pattern), its ``input`` (the stream tensor), its ``output``
    (after the scale and bias), ``scale``/``bias`` constants (``bias`` ``None``: none), ``epsilon``, and
    ``centred`` (a LayerNorm subtracts the mean over the features, an RMSNorm does not)."""

    nodes: tuple[int, ...]
    input: str
    output: str
    scale: str
    bias: str | None
    epsilon: float
    centred: bool
    label: str


def find_norms(view: GraphView) -> list[NormMatch]:
    """Every normalisation of ``view`` over the last axis (see module docstring), in node order."""
    out = []
    for i, n in enumerate(view.nodes):
        m: NormMatch | None = None
        if n.op_type == "LayerNormalization":
            m = _fused(view, i)
        elif n.op_type == "ReduceMean" and _last_axis(view, i):
            m = _decomposed(view, i)
        if m is not None:
            out.append(m)
    return out


def _fused(view: GraphView, i: int) -> NormMatch | None:
    n = view.nodes[i]
    shape = view.shapes.get(n.input[0])
    if not shape or int(view.attr(i, "axis", -1)) % len(shape) != len(shape) - 1:
        return None
    if len(n.output) > 1 and any(n.output[1:]):
        return None  # its mean or inverse deviation is read
    bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
    eps = float(view.attr(i, "epsilon", 1e-5))
    return NormMatch((i,), n.input[0], n.output[0], n.input[1], bias, eps, True, view.node_label(i))


def _last_axis(view: GraphView, i: int) -> bool:
    n = view.nodes[i]
    axes = view.attr(i, "axes")
    if axes is None and len(n.input) > 1 and n.input[1]:
        v = view.const(n.input[1])
        axes = None if v is None else [int(a) for a in np.reshape(v, -1)]
    shape = view.shapes.get(n.input[0])
    return bool(axes is not None and len(axes) == 1 and shape and int(axes[0]) % len(shape) == len(shape) - 1) and bool(
        view.attr(i, "keepdims", 1)
    )


def _only(view: GraphView, tensor: str, *ops: str) -> int | None:
    """The single node reading ``tensor``, if it is one of ``ops`` (and ``tensor`` is no graph output)."""
    users = view.users(tensor)
    if len(users) != 1 or tensor in view.outputs or tensor in view.captured:
        return None
    return users[0].node if view.nodes[users[0].node].op_type in ops else None


def _scalar(view: GraphView, name: str) -> float | None:
    v = view.const(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


def _other(view: GraphView, node: int, tensor: str) -> str:
    """The other input of binary ``node`` than ``tensor``."""
    ins = list(view.nodes[node].input)
    return ins[1 - ins.index(tensor)]


def _square_of(view: GraphView, i: int) -> str | None:
    """What node ``i`` squares: ``Pow(y, 2)`` or ``Mul(y, y)``."""
    n = view.nodes[i]
    if n.op_type == "Pow" and _scalar(view, n.input[1]) == 2.0:
        return n.input[0]
    if n.op_type == "Mul" and n.input[0] == n.input[1]:
        return n.input[0]
    return None


def _decomposed(view: GraphView, r: int) -> NormMatch | None:
    """The pattern whose mean of squares is ReduceMean ``r``."""
    sq = view.producer.get(view.nodes[r].input[0])
    if sq is None:
        return None
    y = _square_of(view, sq)
    if y is None or _only(view, view.nodes[sq].output[0], "ReduceMean") != r:
        return None
    nodes: list[int] = [sq, r]
    centred, x = False, y
    p = view.producer.get(y)
    if p is not None and view.nodes[p].op_type == "Sub":  # d = x − mean(x)
        x, mean = view.nodes[p].input
        mp = view.producer.get(mean)
        if mp is None or view.nodes[mp].op_type != "ReduceMean" or view.nodes[mp].input[0] != x:
            return None
        if not _last_axis(view, mp) or _only(view, mean, "Sub") != p:
            return None
        centred, nodes = True, [mp, p, *nodes]
    elif p is not None and view.nodes[p].op_type == "Cast" and len(view.users(y)) == 2:
        x, nodes = view.nodes[p].input[0], [p, *nodes]  # a Cast only the pattern reads (else it is the stream's)
    a = _only(view, view.nodes[r].output[0], "Add")
    if a is None:
        return None
    eps = _scalar(view, _other(view, a, view.nodes[r].output[0]))
    s = _only(view, view.nodes[a].output[0], "Sqrt")
    if eps is None or s is None:
        return None
    nodes += [a, s]
    normed = _divided(view, view.nodes[s].output[0], y, nodes)
    if normed is None:
        return None
    return _scaled(view, normed, x, nodes, eps, centred)


def _divided(view: GraphView, root: str, y: str, nodes: list[int]) -> str | None:
    """``y / root`` as ``Div(y, root)``, ``Mul(y, Div(1, root))`` or ``Mul(y, Reciprocal(root))``: its output."""
    users = view.users(root)
    if len(users) != 1 or root in view.outputs:
        return None
    u = users[0].node
    n = view.nodes[u]
    if n.op_type == "Div" and list(n.input) == [y, root]:
        nodes.append(u)
        return n.output[0]
    if (n.op_type == "Reciprocal") or (n.op_type == "Div" and users[0].slot == 1 and _scalar(view, n.input[0]) == 1.0):
        m = _only(view, n.output[0], "Mul")
        if m is None or sorted(view.nodes[m].input) != sorted([y, n.output[0]]):
            return None
        nodes += [u, m]
        return view.nodes[m].output[0]
    return None


def _scaled(view: GraphView, normed: str, x: str, nodes: list[int], eps: float, centred: bool) -> NormMatch | None:
    """The scale ``Mul(γ, ·)`` (after an optional ``Cast``) and bias ``Add(·, β)`` after the normalised ``normed``."""
    cur = normed
    c = _only(view, cur, "Cast")
    if c is not None:
        nodes.append(c)
        cur = view.nodes[c].output[0]
    m = _only(view, cur, "Mul")
    if m is None:
        return None
    gamma = _other(view, m, cur)
    g = view.const(gamma)
    shape = view.shapes.get(x)
    if g is None or not shape or g.size != shape[-1] or (g.ndim and g.shape[-1] != g.size):
        return None
    nodes.append(m)
    out, bias = view.nodes[m].output[0], None
    b = _only(view, out, "Add")
    if b is not None and centred:
        other = _other(view, b, out)
        v = view.const(other)
        if v is not None and v.size == g.size and (v.ndim == 0 or v.shape[-1] == v.size):
            nodes.append(b)
            out, bias = view.nodes[b].output[0], other
    first = min(nodes)
    return NormMatch(tuple(sorted(nodes)), x, out, gamma, bias, eps, centred, view.node_label(first))
