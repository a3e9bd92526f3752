"""SRN: serialise residual blocks into plain chains (``--residual srn``, ALGORITHMS.md §8).

A residual block ``y = s(x) + f(x)`` with ``f = conv_N ∘ act ∘ … ∘ act ∘ conv_1`` and a shortcut
``s`` that is the identity, option A (``Pad(Slice(x))``: strided samples, zero channels) or a 1x1
projection conv, is rewritten so that the block input is *carried* through the branch as extra
channels (shapes ``[out, in, kh, kw]``, carried channels first)::

    conv_1' = [D ; W_1]                    C_x + C_1 outputs, bias [0 ; b_1]
    conv_k' = [[D, 0], [0, W_k]]           1 < k < N: the carried channels pass through
    conv_N' = [S , W_N]                    bias b_N + b_S; its output replaces the Add's

``D`` is a Dirac kernel (1 at the kernel centre of channel c → c), which with symmetric
"same" padding ``p = (k-1)/2 · d`` reads ``x`` at the strided positions ``i·s``; ``S`` is the
shortcut as a kernel on the carried channels (identity, the option-A channel offset, or the
projection's 1x1 weights, all at the centre tap).  The carried values pass every inner
activation unchanged only where the activation is the identity on the values ``x`` can take
(``x ≥ 0`` from a ``Relu`` through an inner ``Relu``): blocks whose input can leave that range
(an inverted residual's linear bottleneck through ``Relu6``) are left as they are, with the
reason.  The serialised model computes the same outputs (exact to float rounding); its blocks
are plain chains whose channels, the carried residual ones included, any method prunes.

Serialisation raises the MACs (a basic block about twice): budgets are counted against the
original model (see :mod:`onnx_poem.api`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .coupling.ops.activations import IDENTITY_ON
from .external import remove_where
from .modelio import copy_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serialised:
    """The serialised model, the blocks serialised (their ``Add`` output tensors) and the residual
    joins left as they were, with why (tensor → reason)."""

    model: onnx.ModelProto
    blocks: tuple[str, ...]
    left: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Block:
    """One serialisable block: its ``Add``, the branch convs and inner activations in order, the
    block input and the shortcut as a matrix ``[C_out, C_x]`` with its bias and stride."""

    add: onnx.NodeProto
    convs: tuple[onnx.NodeProto, ...]
    acts: tuple[onnx.NodeProto, ...]
    x: str
    shortcut: np.ndarray
    shortcut_bias: np.ndarray | None
    dead: tuple[onnx.NodeProto, ...]  # shortcut nodes no longer needed
    stride: tuple[int, ...] | None  # the shortcut's (None: 1)


@dataclass(frozen=True)
class _Net:
    """Lookups over a graph: producers, readers, initializers, constants (initializers and ``Constant``
    nodes' values) and graph outputs."""

    producer: dict[str, onnx.NodeProto]
    readers: dict[str, list[onnx.NodeProto]]
    inits: dict[str, onnx.TensorProto]
    consts: dict[str, np.ndarray]
    outputs: set[str]

    @classmethod
    def of(cls, g: onnx.GraphProto) -> _Net:
        readers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                readers.setdefault(i, []).append(n)
        inits = {t.name: t for t in g.initializer}
        consts = {k: numpy_helper.to_array(t) for k, t in inits.items() if len(t.dims) <= 1}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        producer = {o: n for n in g.node for o in n.output}
        return cls(producer, readers, inits, consts, {o.name for o in g.output})

    def const(self, name: str) -> np.ndarray:
        if name in self.consts:
            return self.consts[name]
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        raise _Skip(f"{name!r} is not a constant")

    def only_reader(self, tensor: str) -> None:
        """:class:`_Skip` unless the block's next node is the only reader of ``tensor``."""
        if len(self.readers.get(tensor, [])) != 1 or tensor in self.outputs:
            raise _Skip(f"{tensor!r} is read outside the block")


@dataclass(frozen=True)
class _Shortcut:
    """A block's shortcut: the block input, the shortcut as a ``[C_out, C_x]`` matrix and bias, its stride
    (``None``: 1 on every axis) and its nodes (removed when the block is serialised)."""

    x: str
    matrix: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, ...] | None
    nodes: tuple[onnx.NodeProto, ...]


class _Skip(Exception):
    """A residual join that cannot be serialised (the message says why; ``depth``: how far the match got,
    0 the shortcut, 1 the branch, 2 the whole chain, so the deepest of the two attempts is reported)."""

    def __init__(self, why: str, depth: int = 0) -> None:
        super().__init__(why)
        self.depth = depth


#: the forms :func:`serialise` writes
FORMS = ("dirac", "1x1")


def serialise(model: onnx.ModelProto, form: str = "dirac") -> Serialised:
    """``model`` (constant-folded, not modified) with every serialisable residual block serialised.

    ``form="dirac"``: the block input carried through the branch (the module docstring); ``"1x1"``: the
    identity or option-A shortcut replaced by a 1x1 conv of its matrix, so each block's output channels
    are a group of their own (the branch's last conv and the shortcut conv produce them, the next block's
    first conv and shortcut read them) at the cost of ``C_x · C_out`` MACs per position.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    out = copy_model(model)
    g = out.graph
    blocks, left = [], {}
    for add in [n for n in g.node if n.op_type == "Add"]:
        net = _Net.of(g)  # each rewrite changes the graph: read it again
        if len(add.input) != 2 or any(i in net.consts for i in add.input):
            continue
        reasons: list[_Skip] = []
        for br, sc in ((0, 1), (1, 0)):
            try:
                block = _match(add, add.input[br], add.input[sc], net, form)
            except _Skip as e:
                reasons.append(e)
                continue
            if form == "dirac":
                _rewrite(g, block, net.inits)
            else:
                _project(g, block, net.inits)
            blocks.append(add.output[0])
            break
        else:
            left[add.output[0]] = str(max(reasons, key=lambda e: e.depth))
    if blocks:
        _drop_unused(g)
        kept_vi = [v for v in g.value_info if v.name not in _changed(g, blocks)]
        del g.value_info[:]
        g.value_info.extend(kept_vi)
    logger.info("SRN: %d residual block(s) serialised, %d left", len(blocks), len(left))
    return Serialised(out, tuple(blocks), left)


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _value_range(tensor: str, net: _Net) -> tuple[float, float]:
    """The interval the values of ``tensor`` lie in, from the op that produces it (through max pooling, whose
    values are some of its input's)."""
    n = net.producer.get(tensor)
    while n is not None and n.op_type in ("MaxPool", "GlobalMaxPool"):
        n = net.producer.get(n.input[0])
    if n is None:
        return -math.inf, math.inf
    if n.op_type == "Relu":
        return 0.0, math.inf
    if n.op_type == "Clip":
        return _clip_bounds(n, net)
    return -math.inf, math.inf


def _clip_bounds(n: onnx.NodeProto, net: _Net) -> tuple[float, float]:
    lo = float(_attr(n, "min", -math.inf))  # type: ignore[arg-type]
    hi = float(_attr(n, "max", math.inf))  # type: ignore[arg-type]
    if len(n.input) > 1 and n.input[1]:
        lo = float(net.const(n.input[1]))
    if len(n.input) > 2 and n.input[2]:
        hi = float(net.const(n.input[2]))
    return lo, hi


def _conv_geometry(conv: onnx.NodeProto, w: np.ndarray) -> tuple[int, ...]:
    """The conv's strides, after checking that a Dirac kernel reads ``x`` at ``i·s``: odd kernel,
    symmetric padding ``(k-1)/2 · d``, no ``auto_pad``."""
    ks = w.shape[2:]
    dims = len(ks)
    if _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise _Skip(f"{conv.name or conv.output[0]}: auto_pad")
    pads = list(_attr(conv, "pads", [0] * 2 * dims))  # type: ignore[call-overload]
    dil = list(_attr(conv, "dilations", [1] * dims))  # type: ignore[call-overload]
    for a, k in enumerate(ks):
        want = (k - 1) // 2 * dil[a]
        if k % 2 == 0 or pads[a] != want or pads[a + dims] != want:
            raise _Skip(f"{conv.name or conv.output[0]}: kernel {list(ks)} with pads {pads} is not centred")
    return tuple(int(s) for s in _attr(conv, "strides", [1] * dims))  # type: ignore[attr-defined]


def _match(add: onnx.NodeProto, branch: str, short: str, net: _Net, form: str) -> _Block:
    """The block whose branch ends in ``branch`` and whose shortcut is ``short`` (or :class:`_Skip`)."""
    sc = _shortcut(short, net)
    try:
        convs, acts = _branch(branch, sc.x, net)
    except _Skip as e:
        raise _Skip(str(e), depth=1) from None
    if form == "1x1":  # nothing is carried through the branch: any chain will do
        return _Block(add, convs, acts, sc.x, sc.matrix, sc.bias, sc.nodes, sc.stride)
    try:
        _check_chain(convs, acts, sc, net)
    except _Skip as e:
        raise _Skip(str(e), depth=2) from None
    return _Block(add, convs, acts, sc.x, sc.matrix, sc.bias, sc.nodes, sc.stride)


def _branch(branch: str, x: str, net: _Net) -> tuple[tuple[onnx.NodeProto, ...], tuple[onnx.NodeProto, ...]]:
    """The convs and inner activations from ``x`` to ``branch``, in order: a chain read only by itself."""
    convs: list[onnx.NodeProto] = []
    acts: list[onnx.NodeProto] = []
    t = branch
    while True:
        n = net.producer.get(t)
        if n is None or n.op_type != "Conv":
            raise _Skip(f"the branch holds {n.op_type if n else 'a graph input'} where a Conv was expected")
        net.only_reader(t)
        if n.input[1] not in net.inits or (len(n.input) > 2 and n.input[2] and n.input[2] not in net.inits):
            raise _Skip(f"{n.name or t}: weights are not constants")
        convs.insert(0, n)
        if n.input[0] == x:
            return tuple(convs), tuple(acts)
        t = n.input[0]
        a = net.producer.get(t)
        if a is None or a.op_type not in (*IDENTITY_ON, "Clip"):
            raise _Skip(f"the branch holds {a.op_type if a else 'a graph input'} between its convs")
        net.only_reader(t)
        acts.insert(0, a)
        t = a.input[0]


def _check_chain(convs: Sequence[onnx.NodeProto], acts: Sequence[onnx.NodeProto], sc: _Shortcut, net: _Net) -> None:
    """:class:`_Skip` unless the block input can be carried through ``convs`` and ``acts`` unchanged and
    the branch's strides and channels match the shortcut's."""
    if len(convs) < 2:
        raise _Skip("a branch of one conv has nothing to carry")
    lo, hi = _value_range(sc.x, net)
    for a in acts:
        ilo, ihi = _clip_bounds(a, net) if a.op_type == "Clip" else IDENTITY_ON[a.op_type]
        if lo < ilo or hi > ihi:
            raise _Skip(
                f"the block input can take values in [{lo:g}, {hi:g}], which its inner {a.op_type} does not pass "
                "unchanged (carried channels would be altered)"
            )
    stride: tuple[int, ...] = ()
    for k, conv in enumerate(convs):
        w = net.const(conv.input[1])
        s = _conv_geometry(conv, w)
        stride = tuple(a * b for a, b in zip(stride, s, strict=True)) if stride else s
        group = int(_attr(conv, "group", 1))  # type: ignore[call-overload]
        if group != 1 and not (0 < k < len(convs) - 1 and group == w.shape[0] and w.shape[1] == 1):
            raise _Skip(f"{conv.name or conv.output[0]}: grouped conv (only inner depthwise convs carry)")
    if stride != (sc.stride or (1,) * len(stride)):
        raise _Skip(f"the branch strides {stride} differ from the shortcut's {sc.stride}")
    if sc.matrix.shape[0] != net.const(convs[-1].input[1]).shape[0]:
        raise _Skip("the shortcut and the branch have different channel counts")
    if net.const(convs[0].input[1]).shape[1] != sc.matrix.shape[1]:
        raise _Skip("the first conv does not read every channel of the block input")


def _shortcut(short: str, net: _Net) -> _Shortcut:
    """The block input, the shortcut as a ``[C_out, C_x]`` matrix, its bias, its stride and its nodes."""
    n = net.producer.get(short)
    c_x = _channels(short, net)
    if n is None or n.op_type not in ("Pad", "Conv") or len(net.readers.get(short, [])) > 1:  # the identity
        if c_x is None:
            raise _Skip("the shortcut's channel count is unknown")
        return _Shortcut(short, np.eye(c_x, dtype=np.float32), None, None, ())
    net.only_reader(short)
    if n.op_type == "Conv":  # a 1x1 projection
        w = net.const(n.input[1])
        if w.shape[2:] != (1,) * (w.ndim - 2) or int(_attr(n, "group", 1)) != 1:  # type: ignore[call-overload]
            raise _Skip("the shortcut conv is not a 1x1 projection")
        if any(int(p) for p in _attr(n, "pads", [])):  # type: ignore[attr-defined]
            raise _Skip("the shortcut conv pads")
        b = net.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        strides = tuple(int(s) for s in _attr(n, "strides", [1] * (w.ndim - 2)))  # type: ignore[attr-defined]
        return _Shortcut(n.input[0], w.reshape(w.shape[0], w.shape[1]), b, strides, (n,))
    # option A: Pad(Slice(x)) with zero channels padded and strided spatial samples from 0
    mode = _attr(n, "mode", b"constant")
    if mode not in (b"constant", "constant") or (len(n.input) > 2 and n.input[2] and float(net.const(n.input[2]))):
        raise _Skip("the shortcut pads with non-zero values")
    pads = net.const(n.input[1]).astype(np.int64)
    rank = len(pads) // 2
    if rank < 3 or any(pads[a] or pads[a + rank] for a in range(rank) if a != 1) or (pads < 0).any():
        raise _Skip("the shortcut pads other axes than the channels")
    s = net.producer.get(n.input[0])
    steps_of = [1] * (rank - 2)
    x = n.input[0]
    if s is not None and s.op_type == "Slice":
        net.only_reader(x)
        starts, ends = net.const(s.input[1]), net.const(s.input[2])
        axes = net.const(s.input[3]) if len(s.input) > 3 and s.input[3] else np.arange(len(starts))
        steps = net.const(s.input[4]) if len(s.input) > 4 and s.input[4] else np.ones(len(starts), np.int64)
        for st, en, ax, sp in zip(starts, ends, axes, steps, strict=True):
            ax = int(ax) % rank
            # from 0 by sp to a positive end: the Add's shapes then match only if it reads every sp-th position
            if ax < 2 or st != 0 or sp < 1 or en <= 0:
                raise _Skip("the shortcut Slice is not a strided sampling of the spatial axes from 0")
            steps_of[ax - 2] = int(sp)
        x = s.input[0]
        dead: tuple[onnx.NodeProto, ...] = (n, s)
    else:
        dead = (n,)
    c_in = _channels(x, net)
    if c_in is None:
        raise _Skip("the shortcut's channel count is unknown")
    m = np.zeros((c_in + int(pads[1] + pads[1 + rank]), c_in), dtype=np.float32)
    m[int(pads[1]) + np.arange(c_in), np.arange(c_in)] = 1.0
    return _Shortcut(x, m, None, tuple(steps_of), dead)


def _channels(tensor: str, net: _Net) -> int | None:
    """The channel count of ``tensor``: its producing conv's (through per-channel activations, Adds, pooling)."""
    n = net.producer.get(tensor)
    while n is not None and n.op_type in (*IDENTITY_ON, "Clip", "Add", "MaxPool", "AveragePool"):
        n = net.producer.get(n.input[0])
    if n is not None and n.op_type == "Conv" and n.input[1] in net.inits:
        return int(net.inits[n.input[1]].dims[0])
    return None


def _centre(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple((k - 1) // 2 for k in shape)


def _project(g: onnx.GraphProto, b: _Block, inits: dict[str, onnx.TensorProto]) -> None:
    """Replace an identity or option-A shortcut by a 1x1 conv of the shortcut matrix (at the block's stride)."""
    if b.dead and b.dead[0].op_type == "Conv":
        return  # already a 1x1 projection
    out = b.add.output[0]
    rank = len(numpy_helper.to_array(inits[b.convs[-1].input[1]]).shape) - 2
    stride = b.stride or (1,) * rank
    w = b.shortcut.reshape(*b.shortcut.shape, *([1] * rank))
    name = f"{out}.srn_shortcut"
    inits[name] = numpy_helper.from_array(w.astype(np.float32), name)
    g.initializer.append(inits[name])
    node = helper.make_node("Conv", [b.x, name], [f"{out}.shortcut"], name=name, strides=list(stride))
    pos = list(g.node).index(b.add)
    g.node.insert(pos, node)
    branch = list(b.add.input).index(b.convs[-1].output[0])
    b.add.input[1 - branch] = node.output[0]
    for n in b.dead:
        g.node.remove(n)


def _rewrite(g: onnx.GraphProto, b: _Block, inits: dict[str, onnx.TensorProto]) -> None:
    """Carry the block input through the branch convs and fold the shortcut into the last one."""
    c_x = b.shortcut.shape[1]
    for k, conv in enumerate(b.convs):
        w = numpy_helper.to_array(inits[conv.input[1]])
        bias = numpy_helper.to_array(inits[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else None
        centre = _centre(w.shape[2:])
        if k == len(b.convs) - 1:  # [S, W_N]: the shortcut at the centre tap
            s = np.zeros((w.shape[0], c_x, *w.shape[2:]), dtype=w.dtype)
            at: tuple[Any, ...] = (slice(None), slice(None), *centre)
            s[at] = b.shortcut
            w2 = np.concatenate([s, w], axis=1)
            if b.shortcut_bias is not None:
                bias = b.shortcut_bias.astype(w.dtype) + (bias if bias is not None else 0)
        else:
            group = int(_attr(conv, "group", 1))  # type: ignore[call-overload]
            if group == 1:
                d = np.zeros((c_x, w.shape[1] + (c_x if k else 0), *w.shape[2:]), dtype=w.dtype)
                at = (np.arange(c_x), np.arange(c_x), *centre)
                d[at] = 1.0
                body = w if k == 0 else np.concatenate([np.zeros((w.shape[0], c_x, *w.shape[2:]), w.dtype), w], 1)
                w2 = np.concatenate([d, body], axis=0)
            else:  # an inner depthwise conv: one more group per carried channel
                d = np.zeros((c_x, 1, *w.shape[2:]), dtype=w.dtype)
                at = (slice(None), 0, *centre)
                d[at] = 1.0
                w2 = np.concatenate([d, w], axis=0)
                _set_attr(conv, "group", group + c_x)
            if bias is not None:
                bias = np.concatenate([np.zeros(c_x, bias.dtype), bias])
        _set_input(g, conv, 1, f"{conv.input[1]}.srn", w2, inits)
        if bias is not None:
            if len(conv.input) > 2 and conv.input[2]:
                _set_input(g, conv, 2, f"{conv.input[2]}.srn", bias, inits)
            else:
                name = f"{conv.input[1]}.srn_bias"
                inits[name] = numpy_helper.from_array(bias, name)
                g.initializer.append(inits[name])
                conv.input.append(name)
    b.convs[-1].output[0] = b.add.output[0]
    g.node.remove(b.add)
    for n in b.dead:
        g.node.remove(n)


def _set_input(
    g: onnx.GraphProto, node: onnx.NodeProto, i: int, name: str, value: np.ndarray, inits: dict[str, onnx.TensorProto]
) -> None:
    t = numpy_helper.from_array(value, name)
    if name in inits:
        inits[name].CopyFrom(t)
    else:
        inits[name] = t
        g.initializer.append(t)
    node.input[i] = name


def _set_attr(node: onnx.NodeProto, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _drop_unused(g: onnx.GraphProto) -> None:
    """Remove the initializers no node reads any more (the replaced weights)."""
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    remove_where(g.initializer, lambda t: t.name not in used)


def _changed(g: onnx.GraphProto, blocks: Sequence[str]) -> set[str]:
    """Tensors whose shapes serialisation changed: every output of a node reading a ``.srn`` weight
    and of the per-channel activations after them."""
    changed = {n.output[0] for n in g.node if any(i.endswith((".srn", ".srn_bias")) for i in n.input)}
    for n in g.node:
        if n.input and n.input[0] in changed:
            changed.update(n.output)
    return changed | set(blocks)
