"""Value types of the coupling analysis: channel groups, consumers, unprunable parts.

A :class:`ChannelGroup` is the unit of pruning: the ``channels`` output
channels of one producer layer, followed through every per-channel operation
(activation, BatchNormalization, pooling, per-channel constants, depthwise
convolutions, flatten) up to the layers that consume them.  Removing channel
``c`` slices index ``c`` out of every :class:`ParamSlice` and removes the input
columns ``c·s … c·s+s-1`` of every :class:`Consumer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ParamSlice:
    """A constant that loses index ``c`` along ``axis`` when channel ``c`` is pruned.

    Attributes:
        name: initializer or ``Constant``-node output name.
        axis: the axis of the stored array that runs over channels.
    """

    name: str
    axis: int


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
        kind: ``conv``, ``gemm`` or ``matmul``.
        weight: name of the weight constant.
        bias: name of the bias constant, ``None`` if the layer has none.
        input: the tensor the consumer reads (its ``x``).
        cols_per_channel: columns of the flattened input per channel (1 without flatten).
        kernel, strides, pads, dilations, auto_pad: conv geometry (2-D), empty for dense layers.
        alpha, beta, trans_b: Gemm attributes (1, 1, False for others).
        bn: index of a BatchNormalization node applied directly to the output, or ``None``.
        output: the tensor holding ``y`` after that BN (the reconstruction target).
        offset: a tensor added to ``output`` before the activation (residual shortcut), or ``None``.
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
    cols_per_channel: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    alpha: float = 1.0
    beta: float = 1.0
    trans_b: bool = False
    bn: int | None = None
    output: str = ""
    offset: str | None = None
    activation: Activation = field(default_factory=Activation)
    act_out: str | None = None
    bias_add: int | None = None


@dataclass(frozen=True)
class ReshapeFix:
    """A ``Reshape`` whose shape constant holds ``channels·s`` at ``position``."""

    node: int
    shape: str
    position: int
    cols_per_channel: int


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together (see module docstring).

    Attributes:
        id: stable identifier (the producer's label).
        producer: index of the producing node.
        channels: number of channels ``C`` before pruning.
        params: every constant sliced along its channel axis (producer weight and bias first).
        consumers: the layers reconstructed after pruning.
        reshapes: Reshape shape constants to rewrite.
        grouped: depthwise conv nodes whose ``group`` attribute equals the channel count.
        tensors: the tensors that carry the channels (for reports).
    """

    id: str
    producer: int
    channels: int
    params: tuple[ParamSlice, ...]
    consumers: tuple[Consumer, ...]
    reshapes: tuple[ReshapeFix, ...] = ()
    grouped: tuple[int, ...] = ()
    tensors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unprunable:
    """A part of the model that is left as it is, with the reason."""

    where: str
    reason: str


@dataclass(frozen=True)
class Coupling:
    """Result of the coupling analysis."""

    groups: tuple[ChannelGroup, ...]
    unprunable: tuple[Unprunable, ...]
