"""Models of given widths without calibration: what a runtime's latency depends on.

A runtime's latency depends on the tensors' shapes, not on the weights' values,
so a model with the channel counts of an allocation is built by keeping the
first atoms of every region and slicing the consumers' weights (no
statistics, no reconstruction): the same shapes the real plan gives.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from ..coupling import ChannelGroup
from ..coupling.groups import positions
from ..graph import GraphView
from ..plan import GroupDecision, PrunePlan
from ..rewrite import apply_plan
from ..solve import consumer_update
from ..solvers import kept_columns
from ..weights import effective


def first_atoms(g: ChannelGroup, quota: np.ndarray) -> np.ndarray:
    """Sorted atoms of ``g`` that keep ``quota[r]`` atoms of each region ``r`` (the first ones of each)."""
    if g.regions is None:
        return np.arange(int(quota[0]))
    regions = np.asarray(g.regions)
    return np.sort(np.concatenate([np.flatnonzero(regions == r)[: int(q)] for r, q in enumerate(quota)]))


def width_plan(view: GraphView, groups: Mapping[str, ChannelGroup], quotas: Mapping[str, np.ndarray]) -> PrunePlan:
    """A plan keeping ``quotas[g]`` atoms per region of each listed group, consumers' weights sliced."""
    decisions = []
    for gid, quota in quotas.items():
        g = groups[gid]
        kept = first_atoms(g, quota)
        if len(kept) == g.channels:
            continue
        updates = []
        for c in g.consumers:
            W0 = effective(view, c)[0]
            own = positions(c.index, kept)
            k = (W0.shape[1] - 1) // (c.in_channels or 1)
            updates.append(consumer_update(view, g, c, W0[:, kept_columns(own, k, W0.shape[1])], own))
        decisions.append(GroupDecision(gid, g.channels, tuple(int(a) for a in kept), tuple(updates)))
    return PrunePlan(tuple(decisions))


def width_model(
    view: GraphView, groups: Mapping[str, ChannelGroup], quotas: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """``view.model`` with the channel counts of ``quotas`` (values meaningless, shapes exact)."""
    return apply_plan(view, dict(groups), width_plan(view, groups, quotas))
