"""Elementwise ops on one tensor: the one registry of activations (:data:`ELEMENTWISE`).

Channels pass every op listed here unchanged.  An entry with a ``kind`` is also an activation the solvers
model (:mod:`onnx_poem.solvers.activations`, by that name) when it follows a consumer layer
(:func:`activation_of`: POEM minimises the error after it); ``identity_on`` is the input range on which it is
the identity (SRN carries residual channels through it there, :mod:`onnx_poem.srn`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...graph import GraphView
from ..flow import Edge, OpKind, Step, Stop, Through, const_per_channel, out_edge, register
from ..groups import Activation

Params = Callable[[GraphView, int], "tuple[float, ...] | None"]


def _none(view: GraphView, node: int) -> tuple[float, ...] | None:
    return ()


def _leaky(view: GraphView, node: int) -> tuple[float, ...] | None:
    return (float(view.attr(node, "alpha", 0.01)),)


def _hard_sigmoid(view: GraphView, node: int) -> tuple[float, ...] | None:
    return (float(view.attr(node, "alpha", 0.2)), float(view.attr(node, "beta", 0.5)))


def _elu(view: GraphView, node: int) -> tuple[float, ...] | None:
    return (float(view.attr(node, "alpha", 1.0)),)


def _gelu(view: GraphView, node: int) -> tuple[float, ...] | None:
    """Opset 20's Gelu; its tanh approximation is not the solvers' ``gelu`` (``None``)."""
    return () if view.attr(node, "approximate", "none") in ("none", b"none") else None


def _clip_bounds(view: GraphView, node: int) -> tuple[float, ...] | None:
    """``(lo, hi)`` from constant inputs (opset 11+) or attributes (before); ``None`` if computed."""
    n = view.nodes[node]
    lo, hi = -np.inf, np.inf
    if len(n.input) > 1 and n.input[1]:
        v = view.const(n.input[1])
        if v is None:
            return None
        lo = float(v)
    if len(n.input) > 2 and n.input[2]:
        v = view.const(n.input[2])
        if v is None:
            return None
        hi = float(v)
    if view.attr(node, "min") is not None:
        lo = float(view.attr(node, "min"))
    if view.attr(node, "max") is not None:
        hi = float(view.attr(node, "max"))
    return (lo, hi)


@dataclass(frozen=True)
class Elementwise:
    """An op that acts elementwise on its first input.

    Attributes:
        op: the ONNX op type.
        kind: the solvers' activation it is after a consumer (``None``: channels pass, but POEM does not
            model it).
        params: reads the activation's constants from the node (``None``: a variant the solvers do not model).
        identity_on: ``(lo, hi)`` where ``f(u) = u``.
        unary: its other inputs are none (``False``: Clip's bounds, PRelu's slope, checked by its own rule).
    """

    op: str
    kind: str | None = None
    params: Params = _none
    identity_on: tuple[float, float] | None = None
    unary: bool = True


_POSITIVE = (0.0, math.inf)

#: every elementwise op channels pass, by op type
ELEMENTWISE: dict[str, Elementwise] = {
    e.op: e
    for e in (
        Elementwise("Relu", "relu", identity_on=_POSITIVE),
        Elementwise("LeakyRelu", "leaky_relu", _leaky, identity_on=_POSITIVE),
        Elementwise("Sigmoid", "sigmoid"),
        Elementwise("Tanh", "tanh"),
        Elementwise("HardSigmoid", "hard_sigmoid", _hard_sigmoid),
        Elementwise("HardSwish", "hard_swish"),
        Elementwise("Softplus", "softplus"),
        Elementwise("Softsign"),
        Elementwise("Elu", "elu", _elu),
        Elementwise("Selu"),
        Elementwise("Celu"),
        Elementwise("Gelu", "gelu", _gelu),
        Elementwise("Mish"),
        Elementwise("Erf"),
        Elementwise("Identity"),
        Elementwise("Cast"),
        Elementwise("Dropout"),
        Elementwise("Neg"),
        Elementwise("Abs"),
        Elementwise("Exp"),
        Elementwise("Sqrt"),
        Elementwise("Reciprocal"),
        Elementwise("Floor"),
        Elementwise("Ceil"),
        Elementwise("Round"),
        Elementwise("ThresholdedRelu"),
        Elementwise("Clip", "clip", _clip_bounds, unary=False),
        Elementwise("PRelu", identity_on=_POSITIVE, unary=False),
    )
}

#: op type → the range where it is the identity (SRN)
IDENTITY_ON = {op: e.identity_on for op, e in ELEMENTWISE.items() if e.identity_on is not None}


def activation_of(view: GraphView, node: int) -> Activation | None:
    """The :class:`Activation` computed by ``node``, ``None`` if it is not one the solvers model."""
    e = ELEMENTWISE.get(view.nodes[node].op_type)
    if e is None or e.kind is None:
        return None
    params = e.params(view, node)
    return None if params is None else Activation(e.kind, params)


def _unary(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0:
        return Stop("channels reach a non-data input")
    return Through((out_edge(view, node, edge),))


def _clip(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0:
        return Stop("channels reach a Clip bound")
    for name in view.nodes[node].input[1:]:
        if name and (v := view.const(name)) is not None and v.size != 1:
            return Stop("Clip with non-scalar bounds")
        if name and not view.is_const(name):
            return Stop("Clip with computed bounds")
    return Through((out_edge(view, node, edge),))


def _prelu(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0:
        return Stop("channels reach a PRelu slope")
    p = const_per_channel(view, view.nodes[node].input[1], edge, channels)
    if isinstance(p, str):
        return Stop(f"PRelu: {p}")
    return Through((out_edge(view, node, edge),), (p,) if p is not None else ())


register(
    OpKind(
        "elementwise",
        tuple(op for op, e in ELEMENTWISE.items() if e.unary),
        flow=_unary,
        heads=True,
        doc="elementwise on one tensor: channels pass",
    )
)
register(
    OpKind(
        "clip",
        ("Clip",),
        flow=_clip,
        heads=True,
        doc="with constant scalar bounds (ReLU6): channels pass",
    )
)
register(OpKind("prelu", ("PRelu",), flow=_prelu, doc="channels pass, the per-channel slope sliced with them"))
