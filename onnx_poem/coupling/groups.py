"""Value types of the coupling analysis: channel groups, consumers, unprunable parts.

A :class:`ChannelGroup` is the unit of pruning: a set of *atoms*, each a set
of channel positions in one or more tensors that must be removed together.
In a plain chain an atom is one output channel of one producer layer, followed
through every per-channel operation (activation, BatchNormalization, pooling,
per-channel constants, depthwise convolutions, flatten) up to the layers that
consume it.  Residual ``Add``s join the channels of several producers into one
group; a channel ``Pad`` (CIFAR option-A shortcut) or a ``Concat`` maps channel
``i`` of one tensor to channel ``i + offset`` of another.  Every member carries
an ``index``: atom → its channel position there, ``-1`` where the atom is absent
(``None``: the identity).  Removing atom ``a`` slices position ``index[a]`` out
of every :class:`ParamSlice` and removes the input columns of that channel from
every :class:`Consumer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from ..graph import GraphView
    from .edits import Rewrite


@dataclass(frozen=True)
class ParamSlice:
    """A constant that loses index ``c`` along ``axis`` when channel ``c`` is pruned.

    Attributes:
        name: initializer or ``Constant``-node output name.
        axis: the axis of the stored array that runs over channels.
    """

    name: str
    axis: int
    index: tuple[int, ...] | None = None
    unit: int = 1  # the group's blocks per position (see ChannelGroup.repeat)

    def constants(self, view: GraphView) -> Iterable[str]:
        return (self.name,)

    def apply(self, rw: Rewrite, g: ChannelGroup, keep: np.ndarray) -> None:
        """Keep the kept atoms' positions along :attr:`axis` (of the value so far: a consumer update first)."""
        rw.arrays[self.name] = np.take(rw.get(self.name), g.positions(self.index, keep, self.unit), axis=self.axis)


Index = tuple[int, ...] | None


class Edit(Protocol):
    """A change the rewrite makes when a group is pruned: a fix an op kind recorded while tracing (a shape
    constant, a grouped conv's ``group``, a channel ``Pad``'s amounts, ...), placed in the group's atoms."""

    def constants(self, view: GraphView) -> Iterable[str]:
        """The model's constants whose values :meth:`apply` changes (sessions share every other one)."""
        ...

    def apply(self, rw: Rewrite, g: ChannelGroup, keep: np.ndarray) -> None:
        """Record the change for the kept atoms ``keep`` in ``rw`` (new constant values, or graph edits
        deferred until the pruned copy exists)."""
        ...


E = TypeVar("E")


def positions(index: Index, keep: np.ndarray, block: int = 1) -> np.ndarray:
    """Sorted channel positions of the kept atoms ``keep`` in a member with ``index``.

    With ``block > 1`` (a group pruned by whole convolution groups, see :class:`ChannelGroup`)
    ``index`` counts blocks of ``block`` consecutive channels; the result lists every channel
    of the kept blocks.
    """
    if index is None:
        pos = np.asarray(keep, dtype=np.int64)
    else:
        idx = np.asarray(index, dtype=np.int64)[np.asarray(keep, dtype=np.int64)]
        pos = np.sort(idx[idx >= 0])
    return pos if block == 1 else (pos[:, None] * block + np.arange(block)).reshape(-1)


@dataclass(frozen=True)
class Activation:
    """The elementwise nonlinearity applied to a consumer's output.

    ``kind`` is one of the names in :mod:`onnx_poem.solvers.activations`
    (``identity``, ``relu``, ``leaky_relu``, ``clip``, ``sigmoid``, ...);
    ``params`` are its constants (LeakyReLU slope, Clip bounds, ...).
    """

    kind: str = "identity"
    params: tuple[float, ...] = ()


@dataclass(frozen=True)
class Consumer:
    """A layer whose input columns are removed, and whose weights are reconstructed.

    The consumer computes ``y = W x + b`` per sample (a conv: per output position
    over its im2col patch).  ``W`` is handled as an ``(m, C·k)`` matrix in
    channel-major order, ``k`` columns per input channel (``k = kh·kw`` for a
    conv, ``s`` for a dense layer after a flatten of ``s`` positions).

    Attributes:
        node: index of the consumer node.
        label: its name for reports.
        kind: ``conv``, ``convt`` (ConvTranspose, handled as the equivalent conv over its
            zero-stuffed input with the flipped, transposed kernel), ``gemm`` or ``matmul``.
        weight: name of the weight constant.
        bias: name of the bias constant, ``None`` if the layer has none.
        input: the tensor the consumer reads (its ``x``).
        kernel, strides, pads, dilations, auto_pad: conv geometry (2-D), empty for dense layers.
        output_padding: ConvTranspose's extra rows/columns at the end (``convt`` only).
        alpha, beta, trans_b: Gemm attributes (1, 1, False for others).
        bn: index of a BatchNormalization node applied directly to the output, or ``None``.
        output: the tensor holding ``y`` after that BN (the reconstruction target).
        offset: a tensor added to ``output`` before the activation, or in a linear residual sum without one
            (a residual shortcut), or ``None``.
        activation: the nonlinearity after that.
        act_out: the tensor holding ``f(y + offset)``, ``None`` for identity.
        bias_add: index of an ``Add`` node that adds the bias of a MatMul, or ``None``.
    """

    node: int
    label: str
    kind: str
    weight: str
    bias: str | None
    input: str
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    output_padding: tuple[int, ...] = ()
    alpha: float = 1.0
    beta: float = 1.0
    trans_b: bool = False
    bn: int | None = None
    output: str = ""
    offset: str | None = None
    activation: Activation = field(default_factory=Activation)
    act_out: str | None = None
    bias_add: int | None = None
    index: tuple[int, ...] | None = None
    in_channels: int = 0
    unit: int = 1  # the group's blocks per input position (see ChannelGroup.repeat)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together (see module docstring).

    Attributes:
        id: stable identifier (the first producer's label).
        producer: index of the first producing node.
        channels: number of atoms before pruning.
        params: every constant sliced along its channel axis (producer weight and bias first).
        consumers: the layers reconstructed after pruning.
        edits: the fixes the op kinds recorded (:class:`Edit`; :meth:`edits_of` picks one kind),
            applied by the rewrite in this order.
        tensors: the tensors that carry the channels (for reports).
        producers: every producer layer of the group (``producer`` is the first).
        residual: some atom is produced by several layers joined by an ``Add``/``Sub``
            (a residual stream), as opposed to producers side by side (``Concat``) or a
            squeeze-excite gate (``Mul``).
        block: channels per atom.  1 except where the channels pass a grouped conv with
            ``1 < group < C`` (ResNeXt, RegNet): an atom is then one conv group, ``block``
            consecutive channels in every member, and ``index``/``channels``/a consumer's
            ``in_channels`` count blocks (:func:`positions` expands them).
        regions: atom → region id, atoms of one region occurring in the same tensors
            (e.g. the channels of one ResNet stage); ratios apply per region.
            ``None``: a single region.
        heads: the atoms are attention heads of ``block`` channels (q, k and v's columns of one
            head and the output projection's inputs of that head; :mod:`onnx_poem.coupling.ops.attention`).
        scaled: MatMul nodes of two computed operands (``q·kᵀ``, ``p·v``) whose MACs scale with the
            kept fraction of the group's atoms.
        repeat: query heads per key/value head of grouped-query attention (1 elsewhere): an atom is a
            key/value head with its ``repeat`` query heads, and the query side's members (``unit`` =
            ``repeat``) hold ``repeat`` blocks per position (their ``index`` and ``in_channels`` count them).
    """

    id: str
    producer: int
    channels: int
    params: tuple[ParamSlice, ...]
    consumers: tuple[Consumer, ...]
    edits: tuple[Edit, ...] = ()
    tensors: tuple[str, ...] = ()
    producers: tuple[int, ...] = ()
    residual: bool = False
    regions: tuple[int, ...] | None = None
    block: int = 1
    heads: bool = False
    scaled: tuple[int, ...] = ()
    repeat: int = 1

    def positions(self, index: Index, keep: np.ndarray, unit: int = 1) -> np.ndarray:
        """Channel positions of the kept atoms ``keep`` in a member with ``index`` and ``unit`` blocks per
        position (blocks expanded)."""
        return positions(index, keep, self.block * unit)

    def edits_of(self, kind: type[E]) -> tuple[E, ...]:
        """The group's edits of one type (e.g. ``ReshapeFix``), in order."""
        return tuple(e for e in self.edits if isinstance(e, kind))


@dataclass(frozen=True)
class Unprunable:
    """A part of the model that is left as it is, with the reason (``unknown_op``: the op no op kind takes,
    when that is why)."""

    where: str
    reason: str
    unknown_op: str | None = None


@dataclass(frozen=True)
class Coupling:
    """Result of the coupling analysis."""

    groups: tuple[ChannelGroup, ...]
    unprunable: tuple[Unprunable, ...]
