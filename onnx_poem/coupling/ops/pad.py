"""``Pad``: of other axes the channels pass; on the channel axis (CIFAR ResNets' option-A shortcut) input channel
``i`` is output channel ``i + before``, a new channel space linked to the input's, and the group becomes a
residual stream.  The pads constant is rewritten to the kept atoms in the padded regions (:class:`PadFix`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ...graph import GraphView
from ..flow import Edge, OneSpace, OpKind, Placement, Step, Stop, Through, out_edge, register
from ..groups import ChannelGroup

if TYPE_CHECKING:
    from ..edits import Rewrite
    from ..trace import Tracer


@dataclass(frozen=True)
class PadFix:
    """A channel ``Pad`` whose pads constant ``pads`` changes with the kept atoms.

    ``index`` maps atoms to output positions (in the group's blocks); ``before``/``after``
    are the padded channel counts and ``size`` the output channel count before pruning.
    """

    node: int
    pads: str
    axis: int
    rank: int
    index: tuple[int, ...]
    before: int
    after: int
    size: int

    #: a channel pad joins a shortcut to a block's output: the group is a residual stream
    residual: ClassVar[bool] = True

    def constants(self, view: GraphView) -> Iterable[str]:
        return (self.pads,)

    def apply(self, rw: Rewrite, g: ChannelGroup, keep: np.ndarray) -> None:
        out_pos = g.positions(self.index, keep)
        pads = rw.get(self.pads).copy()
        ax = self.axis % self.rank
        pads[ax] = int(np.sum(out_pos < self.before))
        pads[ax + self.rank] = int(np.sum(out_pos >= self.size - self.after))
        rw.arrays[self.pads] = pads


@dataclass(frozen=True)
class PadAt(OneSpace):
    """A channel ``Pad`` (constant ``pads``) whose output is ``space``: ``before``/``after`` channels padded."""

    node: int
    pads: str
    axis: int
    rank: int
    space: int
    before: int
    after: int

    def place(self, p: Placement) -> PadFix:
        return PadFix(self.node, self.pads, self.axis, self.rank, p.ix_all(self.space), self.before, self.after,
                      p.sizes[self.space])  # fmt: skip


@dataclass(frozen=True)
class ChannelPad:
    """A ``Pad`` of the channel axis: its pads constant and the channels padded before and after."""

    pads: str
    before: int
    after: int


def channel_pads(tr: Tracer, node: int, edge: Edge) -> ChannelPad | None:
    """How a ``Pad`` pads the channel axis; ``None`` if it pads other axes only."""
    view, n = tr.view, tr.view.nodes[node]
    pads = view.const(n.input[1]) if len(n.input) > 1 else None
    if pads is None or edge.rank is None or pads.size != 2 * edge.rank or (len(n.input) > 3 and n.input[3]):
        tr.stop(node, "computed or axis-restricted pads")
    if len(n.input) > 2 and n.input[2] and float(np.asarray(view.const(n.input[2])).reshape(-1)[0]) != 0:
        tr.stop(node, "non-zero pad value")
    ax = edge.axis % edge.rank
    before, after = int(pads[ax]), int(pads[ax + edge.rank])
    if before < 0 or after < 0:
        tr.stop(node, "negative pads")
    return ChannelPad(n.input[1], before, after) if before or after else None


def _channel_pad(tr: Tracer, node: int, slot: int | None, space: int, edge: Edge) -> bool:
    """Input channel i is output channel ``i + before``."""
    if slot not in (None, 0):
        return False
    found = channel_pads(tr, node, edge)
    if found is None:
        return False
    before, after = found.before, found.after
    n = tr.view.nodes[node]
    if n.input[0] in tr.member:
        inner = tr.space_for(node, n.input[0], 0, edge)
        outer = tr.space_for(node, n.output[0], tr.sizes[inner] + before + after, edge)
    else:
        outer = tr.space_for(node, n.output[0], 0, edge)
        inner = tr.space_for(node, n.input[0], tr.sizes[outer] - before - after, edge)
    tr.link(inner, outer, 0, before, tr.sizes[inner])
    tr.record(PadAt(node, found.pads, edge.axis, edge.rank or 0, outer, before, after))
    return True


def _other_axes(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    return Through((out_edge(view, node, edge),)) if slot == 0 else Stop("channels reach a Pad parameter")


register(
    OpKind(
        "pad",
        ("Pad",),
        flow=_other_axes,
        hook=_channel_pad,
        doc="of other axes: channels pass; of the channel axis (option-A shortcut): an offset, pads rewritten",
    )
)
