"""``BatchNormalization`` and ``InstanceNormalization`` over the channel axis: per-channel parameters, sliced
with the channels.  (Normalisations over the features of a transformer's residual stream are the hidden
size's business: :mod:`onnx_poem.hidden`.)"""

from __future__ import annotations

from ...graph import GraphView
from ..flow import Edge, OpKind, Step, Stop, Through, out_edge, register
from ..groups import ParamSlice


def _instancenorm(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0 or edge.cols != 1 or edge.axis % (edge.rank or 2) != 1:
        return Stop("InstanceNormalization not on the channel axis")
    names = view.nodes[node].input[1:3]
    if not all(view.is_const(t) and view.const_users(t) == 1 for t in names):
        return Stop("InstanceNormalization with non-constant or shared parameters")
    return Through((out_edge(view, node, edge),), tuple(ParamSlice(t, 0) for t in names))


def _batchnorm(view: GraphView, node: int, slot: int, edge: Edge, channels: int) -> Step:
    if slot != 0 or edge.cols != 1 or edge.axis % (edge.rank or 2) != 1:
        return Stop("BatchNormalization not on the channel axis")
    params = []
    for name in view.nodes[node].input[1:5]:
        if not view.is_const(name) or view.const_users(name) != 1:
            return Stop("BatchNormalization with non-constant or shared parameters")
        params.append(ParamSlice(name, 0))
    return Through((out_edge(view, node, edge),), tuple(params))


register(
    OpKind(
        "instance norm",
        ("InstanceNormalization",),
        flow=_instancenorm,
        doc="per-channel parameters sliced with the channels",
    )
)
register(
    OpKind(
        "batch norm", ("BatchNormalization",), flow=_batchnorm, doc="per-channel parameters sliced with the channels"
    )
)
