"""``Split`` and ``Slice``: along other axes the channels pass; along the channel axis output ``k`` holds input
positions ``start_k …`` (a channel space of its own, linked to the input's), and the ranges are rewritten to the
kept atoms (:class:`RangeFix`: a Slice's bounds, a Split's sizes)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...external import remove_where
from ...graph import GraphView, opset_of
from ..edits import Phase
from ..flow import Edge, OneSpace, OpKind, Placement, Step, Stop, Through, out_edge, register
from ..groups import ChannelGroup

if TYPE_CHECKING:
    from ..edits import Rewrite
    from ..trace import Tracer


@dataclass(frozen=True)
class RangeFix:
    """A channel ``Split`` or ``Slice`` whose ranges change with the kept atoms.

    ``index`` maps atoms to input positions (in the group's blocks); ``parts`` are the
    ``(start, length)`` input channel ranges of the outputs before pruning; ``entry`` is the position of the
    channel axis in a Slice's ``starts``/``ends``.
    """

    node: int
    index: tuple[int, ...]
    parts: tuple[tuple[int, int], ...]
    entry: int = 0

    def constants(self, view: GraphView) -> Iterable[str]:
        node = view.nodes[self.node]
        return tuple(node.input[1:3]) if node.op_type == "Slice" else ()

    def apply(self, rw: Rewrite, g: ChannelGroup, keep: np.ndarray) -> None:
        kept = g.positions(self.index, keep)
        starts = [int(np.sum(kept < a)) for a, _ in self.parts]
        sizes = [int(np.sum((kept >= a) & (kept < a + n))) for a, n in self.parts]
        node = rw.view.nodes[self.node]
        if node.op_type == "Slice":
            for name, value in ((node.input[1], starts[0]), (node.input[2], starts[0] + sizes[0])):
                arr = rw.get(name).copy()
                arr.reshape(-1)[self.entry] = value
                rw.arrays[name] = arr
            return

        def edit(model: onnx.ModelProto) -> Iterable[str]:  # a sizes input of its own: exporters share equal ones
            _set_split(model, self.node, sizes)
            return ()

        rw.later(Phase.SIZES, edit)


def _set_split(model: onnx.ModelProto, idx: int, sizes: list[int]) -> None:
    """Give Split node ``idx`` explicit sizes (attribute before opset 13, input after; opset 18's
    ``num_outputs`` attribute is dropped, as the two may not be given together)."""
    node = model.graph.node[idx]
    kept = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept)
    for a in node.attribute:
        if a.name == "split":
            del a.ints[:]
            a.ints.extend(sizes)
            return
    opset = opset_of(model)
    if opset < 13:
        node.attribute.append(helper.make_attribute("split", sizes))
        return
    name = f"{node.output[0]}__poem_split"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, dtype=np.int64), name))
    while len(node.input) < 2:
        node.input.append("")
    old, node.input[1] = node.input[1], name
    if old and not any(old in n.input for n in model.graph.node):  # the sizes it had were its own
        remove_where(model.graph.initializer, lambda t: t.name == old)


@dataclass(frozen=True)
class RangeAt(OneSpace):
    """A channel ``Split``/``Slice`` of ``space`` into ``(start, length)`` ``parts``; ``entry``: see RangeFix."""

    node: int
    space: int
    parts: tuple[tuple[int, int], ...]
    entry: int

    def place(self, p: Placement) -> RangeFix:
        return RangeFix(self.node, p.ix_all(self.space), self.parts, self.entry)


@dataclass(frozen=True)
class Parts:
    """A channel ``Split``/``Slice``: ``(start, length)`` of each output's input channels, and ``entry``, the
    position of the channel axis among a Slice's ``axes``."""

    parts: tuple[tuple[int, int], ...]
    entry: int


def channel_parts(tr: Tracer, node: int, edge: Edge) -> Parts | None:
    """How a ``Split``/``Slice`` cuts the channel axis; ``None`` if it cuts other axes only."""
    view, n = tr.view, tr.view.nodes[node]
    rank = edge.rank or 0
    if not rank or edge.cols != 1:
        tr.stop(node, "unknown rank")
    ax = edge.axis % rank
    shape = view.shapes.get(n.input[0])
    total = shape[ax] if shape is not None else None
    if n.op_type == "Split":
        if int(view.attr(node, "axis", 0)) % rank != ax:
            return None
        found = [view.shapes.get(o, (None,) * rank)[ax] for o in n.output]
        sizes = [int(v) for v in found if v is not None]
        if len(sizes) != len(found):
            tr.stop(node, "unknown split sizes")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return Parts(tuple((int(a), int(b)) for a, b in zip(offsets, sizes, strict=True)), 0)
    starts, ends = view.const(n.input[1]), view.const(n.input[2])
    if starts is None or ends is None:
        tr.stop(node, "Slice with computed parameters")
    axes: np.ndarray | None = np.arange(np.size(starts))
    steps: np.ndarray | None = np.ones(np.size(starts), np.int64)
    if len(n.input) > 3 and n.input[3]:
        axes = view.const(n.input[3])
    if len(n.input) > 4 and n.input[4]:
        steps = view.const(n.input[4])
    if axes is None or steps is None:
        tr.stop(node, "Slice with computed parameters")
    hit = [k for k, a in enumerate(np.reshape(axes, -1)) if int(a) % rank == ax]
    if not hit:
        return None
    k = hit[0]
    if view.const_users(n.input[1]) != 1 or view.const_users(n.input[2]) != 1:
        tr.stop(node, "Slice bounds shared by several nodes")
    if int(np.reshape(steps, -1)[k]) != 1 or total is None:
        tr.stop(node, "strided or unsized channel Slice")
    a, b = (
        int(np.clip(v if v >= 0 else v + total, 0, total)) for v in (np.reshape(starts, -1)[k], np.reshape(ends, -1)[k])
    )
    return Parts(((a, max(b - a, 0)),), k)


def _channel_split(tr: Tracer, node: int, slot: int | None, space: int, edge: Edge) -> bool:
    """Output k holds input positions ``start_k …``."""
    if slot not in (None, 0):
        return False
    cut = channel_parts(tr, node, edge)
    if cut is None:
        return False
    n = tr.view.nodes[node]
    if edge.per != 1:
        tr.stop(node, "Split or Slice of attention heads")
    source = n.input[0]
    in_space = tr.space_for(node, source, tr.size_of(node, source, edge), edge)
    for out, (start, length) in zip(n.output, cut.parts, strict=True):
        tr.link(tr.space_for(node, out, length, edge), in_space, 0, start, length)
    tr.record(RangeAt(node, in_space, cut.parts, cut.entry))
    return True


def _slice_other_axes(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    if slot != 0 or edge.rank is None:
        return Stop("channels reach a Slice parameter")
    starts = view.const(n.input[1])
    axes = view.const(n.input[3]) if len(n.input) > 3 and n.input[3] else None
    if starts is None or (len(n.input) > 3 and n.input[3] and axes is None):
        return Stop("Slice with computed parameters")
    sliced = {int(a) % edge.rank for a in (axes if axes is not None else range(starts.size))}
    if edge.axis % edge.rank in sliced:
        return Stop("Slice on the channel axis is not supported yet")
    return Through((out_edge(view, node, edge),))


register(
    OpKind(
        "split",
        ("Split",),
        hook=_channel_split,
        heads=True,
        doc="along the channels: each output a range, sizes rewritten",
    )
)
register(
    OpKind(
        "slice",
        ("Slice",),
        flow=_slice_other_axes,
        hook=_channel_split,
        heads=True,
        doc="of other axes: channels pass; of the channel axis: a range, bounds rewritten",
    )
)
