"""PRO's sensitivity pass: per-group error curves at the model's output (the allocation stage's measurements).

The curves feed :func:`onnx_poem.allocation.pro_keeps`, which spends the MACs
budget where the error per MAC saved is smallest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from .allocation import pro_quota
from .calibration.collect import collect, layer_data
from .calibration.sources import CalibrationData
from .cascade import Current, Stream, cut_position
from .config import PruneConfig
from .coupling import ChannelGroup
from .coupling.groups import positions
from .damping import group_damping
from .errors import one_line
from .graph import GraphView, release_segments
from .plan import ConsumerUpdate
from .probe import Probe
from .solve import consumer_update
from .solvers import LayerData, QuadProblem, greedy_eliminate, kept_columns, reconstruct
from .timing import stage
from .weights import effective

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

#: PRO's probes of the final-output error use at most this many selection samples
PROBE_SAMPLES = 64


def error_curves(
    view: GraphView,
    groups: list[ChannelGroup],
    every: dict[str, ChannelGroup],
    data: CalibrationData,
    chunks: list[np.ndarray],
    n_fit: int,
    ratio: float,
    cfg: PruneConfig,
    tmp: Path,
    probe_idx: np.ndarray,
    progress: Progress | None,
    failed: dict[str, str],
) -> dict[str, np.ndarray]:
    """PRO's per-group error curves, in units of the final output's relative error.

    Local curve (one parallel pass over the original model's statistics):
    ``e_g(j)`` after greedily removing ``j`` atoms of ``g`` (up to
    :func:`onnx_poem.allocation.pro_cap` of ``ratio`` of every region), summed over the consumers, each
    relative to the variance of its original output ``V = tr(W0 Σ_x W0ᵀ)·N``
    (POEM: on the activation-weighted Gram).  Local errors of different layers
    are not worth the same at the model's output, so each curve is rescaled
    [R]: the group alone is pruned (least-squares refit) and the model's outputs
    on ``probe_idx`` (selection samples, not fitting ones) give the final relative error
    ``ε_g(j) = Σ‖o' − o‖² / Σ‖o − ō‖²`` at ``j0 = round(ratio·C)``, ``2·j0`` and
    the curve's end; the curve is multiplied by ``ε_g(j) / e_g(j)``, interpolated
    linearly in ``j`` between those points (no extrapolation).  The probes run
    as :class:`onnx_poem.probe.Probe` describes.

    ``chunks``: the fitting batches (the first ``n_fit`` samples): [R, speed] the curves read only the sums
    ``G, P, Gw, Pw`` of the fitting samples, so the pass neither visits the selection batches nor keeps
    reservoir rows (the same curves; ResNet-50's pass had spent ~6 s on both, and held its consumers' rows).
    """
    probe_cfg = replace(cfg, mode="parallel")
    work = tmp / "pro"
    work.mkdir()
    streams = (Stream(view, data, chunks, work, "orig"), Stream(view, data, chunks, work, "cur"))
    order = sorted(groups, key=lambda g: cut_position(view, g))
    probe = Probe(view, every, data, probe_idx, cfg.batch_size, work)
    curves: dict[str, np.ndarray] = {}
    for i, g in enumerate(order):
        release_segments()
        if progress:
            progress(i, len(order), f"sensitivity {g.id}")
        nxt = cut_position(view, order[i + 1]) if i + 1 < len(order) else None
        try:
            curves[g.id] = _error_curve(view, g, streams, nxt, n_fit, probe_cfg, i, ratio, probe)
        except Exception as e:
            failed[g.id] = f"error curve: {one_line(e)}"
            logger.warning("group %s left unpruned: %s", g.id, failed[g.id])
            curves[g.id] = np.zeros(0)
    return curves


def _error_curve(
    view: GraphView,
    g: ChannelGroup,
    streams: tuple[Stream, Stream],
    nxt: int | None,
    n_fit: int,
    cfg: PruneConfig,
    i: int,
    ratio: float,
    probe: Probe,
) -> np.ndarray:
    """PRO's curve of one group (see :func:`error_curves`)."""
    W0s = [effective(view, c)[0] for c in g.consumers]
    with stage("statistics"):
        stats = collect(view, Current.original(view), g, W0s, streams, nxt, n_fit, cfg, i, reservoirs=False)
    layers = [layer_data(c, W0, st) for c, W0, st in zip(g.consumers, W0s, stats, strict=True)]
    problems, scales = [], []
    for d in layers:
        G, P = d.Gw, d.Pw  # activation-weighted for POEM; LayerStats.finish makes them G, P otherwise
        problems.append(QuadProblem(G, P, d.W0, d.k, d.index))
        n, count = G.shape[0] - 1, max(G[-1, -1], 1e-12)
        mean = G[:n, -1] / count
        M = d.W0[:, :n]
        # tr(M G Mᵀ) as one matrix product (a three-operand einsum loops in C without BLAS: 7.6 s vs 0.15 s
        # for a BERT-base FFN, 40 % of its PRO pass)
        V = float(np.sum((M @ G[:n, :n]) * M) - count * np.sum((M @ mean) ** 2))
        scales.append(1.0 / max(V, 1e-12 * float(np.sum(M * M)) + 1e-30))
    quota = pro_quota(g, ratio)
    trace: list[float] = []
    removed: list[int] = []
    greedy_eliminate(
        problems,
        g.channels,
        int(quota.sum()),
        lam=group_damping(view, g, cfg),
        regions=None if g.regions is None else np.asarray(g.regions),
        region_keep=quota,
        trace=trace,
        scales=scales,
        removed=removed,
    )
    curve = np.cumsum(trace)
    if not len(curve):
        return curve
    j0 = min(len(curve), max(1, round(ratio * g.channels)))
    points = sorted({j0, min(len(curve), 2 * j0), len(curve)})
    variants = [refit_alone(view, g, layers, removed[:j], cfg) for j in points]
    errors = probe.errors(g, variants)
    scale = [e / probe.spread / max(float(curve[j - 1]), 1e-30) for e, j in zip(errors, points, strict=True)]
    return curve * np.interp(np.arange(1, len(curve) + 1), points, scale)


def refit_alone(
    view: GraphView, g: ChannelGroup, layers: list[LayerData], removed: list[int], cfg: PruneConfig
) -> list[ConsumerUpdate]:
    """Full-width updates of ``g``'s consumers with atoms ``removed`` read with zero weights and the others
    refit by least squares: the outputs of ``g`` alone pruned (:mod:`onnx_poem.probe`)."""
    kept = np.setdiff1d(np.arange(g.channels), removed)
    lam = group_damping(view, g, cfg)
    updates = []
    for c, d in zip(g.consumers, layers, strict=True):
        own = positions(c.index, kept)
        every = positions(c.index, np.arange(g.channels))
        W = np.zeros((d.W0.shape[0], len(every) * d.k + 1))
        W[:, kept_columns(own, d.k, W.shape[1])] = reconstruct(d, own, method="ls", lam=lam).W
        updates.append(consumer_update(view, g, c, W, every))
    return updates
