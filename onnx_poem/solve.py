"""The solve stage for one group: statistics → kept atoms (selection) → new consumer weights (reconstruction)."""

from __future__ import annotations

import logging
import time

import numpy as np

from .calibration.collect import collect, layer_data
from .calibration.stats import LayerStats
from .cascade import Current, Stream
from .config import PruneConfig
from .coupling import ChannelGroup, Consumer
from .coupling.groups import positions
from .damping import group_damping
from .graph import GraphView
from .plan import ConsumerUpdate, GroupDecision
from .report import LayerReport
from .solvers import RECONSTRUCTION, LayerData, kept_columns, reconstruct, relative_errors, select_channels
from .timing import stage
from .weights import effective, stored_arrays

logger = logging.getLogger(__name__)


def solve_group(
    view: GraphView,
    current: Current,
    g: ChannelGroup,
    quota: np.ndarray,
    streams: tuple[Stream, Stream],
    next_cut: int | None,
    n_fit: int,
    cfg: PruneConfig,
    index: int,
) -> tuple[GroupDecision, list[LayerReport]]:
    t0 = time.perf_counter()
    W0s = [effective(view, c)[0] for c in g.consumers]
    with stage("statistics"):
        stats = collect(view, current, g, W0s, streams, next_cut, n_fit, cfg, index)
    layers = [layer_data(c, W0, st) for c, W0, st in zip(g.consumers, W0s, stats, strict=True)]
    lam = group_damping(view, g, cfg)
    with stage("selection"):
        kept = _select(view, g, layers, quota, cfg, index, lam)
    with stage("reconstruction"):
        updates, reports = _reconstruct_group(view, g, layers, stats, kept, cfg, lam, t0)
    return GroupDecision(g.id, g.channels, tuple(int(i) for i in kept), tuple(updates)), reports


def _select(
    view: GraphView,
    g: ChannelGroup,
    layers: list[LayerData],
    quota: np.ndarray,
    cfg: PruneConfig,
    index: int,
    lam: float,
) -> np.ndarray:
    """Sorted kept atoms of ``g`` (``quota``: atoms to keep per region) by ``cfg.method``, ridge ``lam``."""
    if int(quota.sum()) >= g.channels:  # nothing to select (a refit of a stream reader, coupling.refit)
        return np.arange(g.channels)
    return select_channels(
        cfg.method,
        layers,
        g.channels,
        int(quota.sum()),
        filters=_filters(view, g),
        seed=cfg.seed + index,
        lam=lam,
        regions=None if g.regions is None else np.asarray(g.regions),
        region_keep=quota,
    )


def _reconstruct_group(
    view: GraphView,
    g: ChannelGroup,
    layers: list[LayerData],
    stats: list[LayerStats],
    kept: np.ndarray,
    cfg: PruneConfig,
    lam: float,
    t0: float,
) -> tuple[list[ConsumerUpdate], list[LayerReport]]:
    """New weights of every consumer of ``g`` on the ``kept`` atoms (ridge ``lam``), and their layer reports."""
    updates, reports = [], []
    for c, d, st in zip(g.consumers, layers, stats, strict=True):
        own = positions(c.index, kept)  # kept channels of this consumer
        # the fit reservoir's rows are read no more after this (its layer's errors use the held-out rows)
        rec = reconstruct(d, own, method=RECONSTRUCTION[cfg.method], lam=lam, consume=True)
        cols = kept_columns(own, d.k, d.G.shape[0])
        errs = {}
        for tag, W in (
            ("none", d.W0[:, cols]),
            ("ls", rec.W_ls if rec.W_ls is not None else reconstruct(d, own, method="ls", lam=lam).W),
            ("chosen", rec.W),
        ):
            errs[f"pre_{tag}"], errs[f"post_{tag}"] = relative_errors(d, W, cols, d.held)
        updates.append(consumer_update(view, g, c, rec.W, own))
        n_params = d.W0.shape[1]
        reports.append(
            LayerReport(
                group=g.id,
                consumer=c.label,
                channels=g.channels,
                kept=len(kept),
                activation=d.activation,
                damping=lam,
                samples=st.count,
                samples_per_param=st.count / n_params,
                errors=errs,
                choice=rec.choice,
                fallbacks=rec.fallbacks,
                seconds=time.perf_counter() - t0,
            )
        )
        if st.count < 10 * n_params:
            logger.info("%s: %.1f samples per weight (< 10): damping holds the fit", c.label, st.count / n_params)
    return updates, reports


def consumer_update(view: GraphView, g: ChannelGroup, c: Consumer, W: np.ndarray, own: np.ndarray) -> ConsumerUpdate:
    """The stored weight and bias of consumer ``c`` for effective weights ``W`` on its kept channels ``own``
    (in the group's blocks: ``W``'s columns run over the kept blocks' channels in order)."""
    channels = positions(None, own, g.block * c.unit)
    w, b = stored_arrays(view, c, W, channels, (c.in_channels or g.channels) * g.block * c.unit)
    return ConsumerUpdate(c.node, c.weight, w, c.bias, b)


def _filters(view: GraphView, g: ChannelGroup) -> np.ndarray:
    """``(atoms, F)`` weights of every producer of ``g``, side by side (zeros where an atom is absent)."""
    blocks = []
    for prod in g.producers or (g.producer,):
        p = next(p for p in g.params if p.name == view.nodes[prod].input[1])
        w = np.moveaxis(np.asarray(view.const(p.name), dtype=np.float64), p.axis, 0)
        w = w.reshape(w.shape[0] // (g.block * p.unit), -1)  # one row per atom (a block's channels side by side)
        idx = np.arange(g.channels) if p.index is None else np.asarray(p.index)
        block = np.zeros((g.channels, w.shape[1]))
        block[idx >= 0] = w[idx[idx >= 0]]
        blocks.append(block)
    return np.concatenate(blocks, axis=1)
