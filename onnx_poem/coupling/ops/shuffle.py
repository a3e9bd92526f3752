"""Channel shuffles (ShuffleNet): ``Reshape (N, C, H, W) → (N, g, C/g, H, W)``, ``Transpose`` of axes 1 and 2,
``Reshape`` back.  Input channel ``c`` is output channel :meth:`Shuffle.target` ``(c)``: two channel spaces,
linked channel by channel.  A pruned shuffle becomes one ``Gather`` of the kept channels in their shuffled order
(:class:`ShuffleFix`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...graph import GraphView
from ..edits import Phase
from ..flow import Edge, OpKind, Placement, only_user, register
from ..groups import ChannelGroup

if TYPE_CHECKING:
    from ..edits import Rewrite
    from ..trace import Tracer


@dataclass(frozen=True)
class Shuffle:
    """A channel shuffle; ``nodes`` are its three nodes."""

    nodes: tuple[int, int, int]
    groups: int
    channels: int

    def target(self, c: int) -> int:
        """The output position of input channel ``c``: ``(g, i) → (i, g)``."""
        per = self.channels // self.groups
        return (c % per) * self.groups + c // per


def channel_shuffle(view: GraphView, node: int, edge: Edge) -> Shuffle | None:
    """The channel shuffle that starts at Reshape ``node`` (reading the channels as ``edge``), or ``None``."""
    n = view.nodes[node]
    shape_in = view.shapes.get(n.input[0])
    first = view.const(n.input[1]) if len(n.input) > 1 else None
    if edge.rank != 4 or edge.axis % 4 != 1 or edge.cols != 1 or first is None or first.size != 5 or not shape_in:
        return None
    channels = shape_in[1]
    dims = [int(d) for d in first.reshape(-1)]
    if channels is None or dims[1] <= 0 or dims[2] <= 0 or dims[1] * dims[2] != channels:
        return None
    t = only_user(view, n.output[0], "Transpose")
    if t is None or [int(p) for p in (view.attr(t, "perm") or ())] != [0, 2, 1, 3, 4]:
        return None
    last = only_user(view, view.nodes[t].output[0], "Reshape")
    second = view.const(view.nodes[last].input[1]) if last is not None else None
    if last is None or second is None or second.size != 4 or int(second.reshape(-1)[1]) not in (channels, -1):
        return None
    if int(second.reshape(-1)[1]) == -1 and (shape_out := view.shapes.get(view.nodes[last].output[0])):
        if len(shape_out) != 4 or shape_out[1] != channels:
            return None
    return Shuffle((node, t, last), dims[1], int(channels))


def shuffle_ending_at(view: GraphView, node: int, edge: Edge) -> Shuffle | None:
    """The channel shuffle whose last Reshape is ``node`` (its output carrying the channels as ``edge``)."""
    t = view.producer.get(view.nodes[node].input[0])
    if edge.rank != 4 or edge.axis % 4 != 1 or t is None or view.nodes[t].op_type != "Transpose":
        return None
    first = view.producer.get(view.nodes[t].input[0])
    if first is None or view.nodes[first].op_type != "Reshape":
        return None
    sh = channel_shuffle(view, first, Edge(view.nodes[first].input[0], 1, 4))
    return sh if sh is not None and sh.nodes[2] == node else None


@dataclass(frozen=True)
class ShuffleFix:
    """A channel shuffle (``nodes``) that the rewrite replaces by a ``Gather`` of the kept channels in their
    shuffled order.  ``source``/``target`` map atoms to the channel positions before and after the shuffle."""

    nodes: tuple[int, int, int]
    source: tuple[int, ...]
    target: tuple[int, ...]

    def constants(self, view: GraphView) -> Iterable[str]:
        return ()

    def apply(self, rw: Rewrite, g: ChannelGroup, keep: np.ndarray) -> None:
        indices = self.indices(np.asarray(keep, dtype=np.int64))
        target = rw.view.nodes[self.nodes[2]].output[0]

        def edit(model: onnx.ModelProto) -> Iterable[str]:
            """The first Reshape becomes ``Gather(axis=1)`` writing the last Reshape's output; the Transpose and
            the last Reshape are read by nothing any more."""
            graph = model.graph
            node = graph.node[self.nodes[0]]
            name = f"{node.output[0]}__poem_gather"
            graph.initializer.append(numpy_helper.from_array(indices, name))
            graph.node[self.nodes[2]].output[0] = f"{target}__poem_unused"
            dropped = {graph.node[self.nodes[1]].output[0], graph.node[self.nodes[2]].output[0]}
            source = node.input[0]
            node.op_type = "Gather"
            del node.input[:]
            node.input.extend([source, name])
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("axis", 1))
            node.output[0] = target
            return dropped

        rw.later(Phase.GATHER, edit)

    def indices(self, keep: np.ndarray) -> np.ndarray:
        """Gather indices that put the kept channels of the shuffle's input in their shuffled order.

        The pruned input holds the kept atoms by increasing input position, the pruned output
        by increasing output position: output ``j`` reads the input rank of the atom ``j``-th in
        output order.
        """
        src = np.asarray(self.source, dtype=np.int64)[keep]
        dst = np.asarray(self.target, dtype=np.int64)[keep]
        src, dst = src[src >= 0], dst[src >= 0]  # atoms of the group that pass this shuffle
        rank = np.argsort(np.argsort(src, kind="stable"), kind="stable")
        return rank[np.argsort(dst, kind="stable")].astype(np.int64)


@dataclass(frozen=True)
class ShuffleAt:
    """A channel shuffle (its three ``nodes``) from space ``source`` to space ``target``."""

    nodes: tuple[int, int, int]
    source: int
    target: int

    per_position: ClassVar[bool] = False
    unblocked: ClassVar[str | None] = "a channel shuffle inside a group pruned by whole conv groups"

    @property
    def spaces(self) -> tuple[int, ...]:
        return (self.source, self.target)

    def place(self, p: Placement) -> ShuffleFix:
        return ShuffleFix(self.nodes, p.ix_all(self.source), p.ix_all(self.target))

    def conflict(self, view: GraphView, others: Sequence[object]) -> str | None:
        return None


def _shuffle(tr: Tracer, node: int, slot: int | None, space: int, edge: Edge) -> bool:
    view = tr.view
    if slot is None:
        sh = shuffle_ending_at(view, node, edge)
    else:
        sh = channel_shuffle(view, node, edge) if slot == 0 else None
    if sh is None:
        return False
    source, target = view.nodes[sh.nodes[0]].input[0], view.nodes[sh.nodes[2]].output[0]
    inner = tr.space_for(sh.nodes[0], source, sh.channels, Edge(source, 1, 4))
    outer = tr.space_for(sh.nodes[2], target, sh.channels, Edge(target, 1, 4))
    if tr.sizes[inner] != sh.channels or tr.sizes[outer] != sh.channels:
        tr.stop(sh.nodes[0], f"shuffle of {sh.channels} channels")
    for c in range(sh.channels):
        tr.link(inner, outer, c, sh.target(c), 1)
    tr.record(ShuffleAt(sh.nodes, inner, outer))
    return True


register(
    OpKind(
        "channel shuffle",
        ("Reshape",),
        hook=_shuffle,
        doc="Reshape -> Transpose -> Reshape: a permutation, rewritten as one Gather",
    )
)
