"""``Reshape`` and ``Flatten`` of channels that are not attention heads (those: :mod:`.attention`).

* a flatten ``(N, C, H, W) → (N, C·H·W)`` (``Flatten``, or a ``Reshape`` to ``[N, -1]`` / ``[N, C·H·W]``):
  each channel becomes ``H·W`` consecutive columns (``Edge.cols``) of the dense layer after it;
* tokens merged or split with the features last, ``(N, T, C) ↔ (N·T, C)`` (tf2onnx's dense layer on
  3-D inputs);
* unit axes inserted or removed after the batch, ``(N, C) ↔ (N, C, 1, 1)`` (tf2onnx's squeeze-excite).

Where the shape constant stores the channel count (or ``C·H·W``), a :class:`ReshapeFix` rewrites it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ...graph import GraphView
from ..flow import Edge, OpKind, Step, Stop, Through, register, where
from ..groups import ChannelGroup, Index

if TYPE_CHECKING:
    from ..edits import Rewrite


@dataclass(frozen=True)
class ReshapeFix:
    """A ``Reshape`` (or ``Expand``) whose shape constant ``shape`` holds ``channels·cols_per_channel / per`` at
    ``position``.

    ``shape`` is the Reshape's shape input, or the constant piece of the ``Concat`` that computes it
    (TorchScript's ``view`` into heads); ``per > 1``: the entry counts attention heads of ``per`` channels.
    """

    node: int
    shape: str
    position: int
    cols_per_channel: int
    index: tuple[int, ...] | None = None
    per: int = 1
    unit: int = 1  # the group's blocks per position (see ChannelGroup.repeat)

    per_position: ClassVar[bool] = False

    def placed(self, index: Index, unit: int) -> ReshapeFix:
        return replace(self, index=index, unit=unit)

    def constants(self, view: GraphView) -> Iterable[str]:
        return (self.shape,)

    def apply(self, rw: Rewrite, g: ChannelGroup, keep: np.ndarray) -> None:
        shape = rw.get(self.shape).copy()
        kept = len(g.positions(self.index, keep, self.unit))
        shape.reshape(-1)[self.position] = kept * self.cols_per_channel // self.per
        rw.arrays[self.shape] = shape

    def conflict(self, view: GraphView, others: Sequence[object]) -> str | None:
        """A computed shape read by nodes this group does not fix would change there as well."""
        fixed = {o.node for o in others if isinstance(o, ReshapeFix)}
        shape = view.nodes[self.node].input[1]
        if not view.is_const(shape) and any(u.node not in fixed for u in view.users(shape)):
            return f"stopped at {where(view, self.node)}: its shape is computed for other nodes too"
        return None


def spatial(view: GraphView, edge: Edge) -> int | None:
    """``H·W·…`` of an ``(N, C, …)`` tensor with the channels on axis 1 (``None``: not known)."""
    shape = view.shapes.get(edge.tensor)
    if shape is None or len(shape) < 2 or edge.axis % len(shape) != 1:
        return None
    size = 1
    for d in shape[2:]:
        if d is None:
            return None
        size *= d
    return size


def _flatten(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if int(view.attr(node, "axis", 1)) != 1:
        return Stop("Flatten with axis != 1")
    s = spatial(view, edge)
    if s is None or edge.cols != 1:
        return Stop("Flatten of a tensor of unknown spatial size")
    return Through((Edge(view.nodes[node].output[0], 1, 2, s),))


def _reshape(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    n = view.nodes[node]
    shape = view.const(n.input[1]) if slot == 0 else None
    last = edge.rank is not None and edge.axis % edge.rank == edge.rank - 1
    out_rank = shape.size if shape is not None else len(view.shapes.get(n.output[0]) or ())
    if last and shape is not None and edge.cols == 1 and shape.size >= 2:
        dims = [int(d) for d in shape.reshape(-1)]
        out_shape = view.shapes.get(n.output[0])
        stays = dims[-1] == channels or (dims[-1] == -1 and out_shape is not None and out_shape[-1] == channels)
        if stays and (dims[-1] == -1 or view.const_users(n.input[1]) == 1):
            # tokens merged or split, features stay last: (N, T, C) <-> (N·T, C) (tf2onnx's Dense on 3-D inputs)
            fixes = (ReshapeFix(node, n.input[1], len(dims) - 1, 1),) if dims[-1] == channels else ()
            return Through((Edge(n.output[0], len(dims) - 1, len(dims)),), edits=fixes)
    moved = _unit_reshape(view, node, edge, channels, shape)
    if moved is not None:
        return moved
    if last and out_rank > (edge.rank or 0):
        return Stop("Reshape splits the feature axis other than (..., T, H·d) -> (..., T, H, d) attention heads")
    s = spatial(view, edge)
    if shape is None or s is None or edge.cols != 1:
        return Stop("Reshape other than a flatten of a known (N, C, ...) tensor")
    dims = [int(d) for d in shape.reshape(-1)]
    if len(dims) != 2 or (dims[0] not in (-1, 0) and dims[0] != (view.shapes.get(edge.tensor) or (None,))[0]):
        return Stop(f"Reshape to {dims} is not a flatten to (N, C·H·W)")
    if dims[1] == -1:
        return Through((Edge(n.output[0], 1, 2, s),))
    if dims[1] != channels * s or view.const_users(n.input[1]) != 1:
        return Stop(f"Reshape to {dims} is not a flatten to (N, C·H·W)")
    return Through((Edge(n.output[0], 1, 2, s),), edits=(ReshapeFix(node, n.input[1], 1, s),))


def _unit_reshape(view: GraphView, node: int, edge: Edge, channels: int, shape: np.ndarray | None) -> Step | None:
    """A Reshape that only inserts or removes unit axes after the batch: ``(N, C) → (N, C, 1, 1)`` (tf2onnx's
    squeeze-excite), ``(N, C, 1, 1) → (N, C)``; the channels keep their order.  ``None`` if it is not one."""
    n = view.nodes[node]
    in_shape, out_shape = view.shapes.get(n.input[0]), view.shapes.get(n.output[0])
    if shape is None or edge.rank is None or edge.cols != 1 or not in_shape or not out_shape or channels < 2:
        return None
    if None in in_shape[1:] or None in out_shape[1:] or len(in_shape) != edge.rank:
        return None
    ax = edge.axis % edge.rank
    if ax == 0 or in_shape[ax] != channels:
        return None
    rest_in = [(i, d) for i, d in enumerate(in_shape) if i > 0 and d != 1]
    rest_out = [(i, d) for i, d in enumerate(out_shape) if i > 0 and d != 1]
    if [d for _, d in rest_in] != [d for _, d in rest_out]:
        return None
    out_ax = rest_out[[i for i, _ in rest_in].index(ax)][0]
    dims = [int(d) for d in shape.reshape(-1)]
    if len(dims) != len(out_shape) or dims[out_ax] not in (channels, -1):
        return None
    if dims[out_ax] == channels and view.const_users(n.input[1]) != 1:
        return Stop("Reshape shape shared by several nodes")
    fixes = (ReshapeFix(node, n.input[1], out_ax, 1),) if dims[out_ax] == channels else ()
    return Through((Edge(n.output[0], out_ax, len(out_shape)),), edits=fixes)


register(
    OpKind(
        "flatten",
        ("Flatten",),
        flow=_flatten,
        doc="(N, C, H, W) -> (N, C·H·W): each channel H·W columns of the next dense layer",
    )
)
register(
    OpKind(
        "reshape",
        ("Reshape",),
        flow=_reshape,
        doc="flattens, token merges with the features last, unit axes: the shape constant rewritten",
    )
)
