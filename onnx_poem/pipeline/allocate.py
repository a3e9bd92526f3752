"""The ``allocate`` stage: units to keep per group, uniform, by PRO's error curves, or for a latency budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..allocation import capped_curves, keep_counts, predicted_error, pro_keeps, region_keeps
from ..latency import LatencyCost, fit_best, ratio_for_latency
from ..latency.widths import width_model
from ..pro import PROBE_SAMPLES, error_curves
from ..timing import stage
from .context import Allocation, Analysis, Curves, Progress, RunContext, fit_chunks


def measure_curves(ctx: RunContext, a: Analysis, progress: Progress | None) -> Curves:
    """PRO's sensitivity pass: every free group's error curve at the output, probed around ``a.ratio``."""
    split, failed = ctx.split, dict[str, str]()
    t1 = time.perf_counter()
    probe = split.select[:PROBE_SAMPLES] if len(split.select) else split.fit[:PROBE_SAMPLES]
    with stage("allocation"):
        curves = error_curves(
            ctx.view, a.free, a.groups, ctx.data, fit_chunks(ctx), len(split.fit), a.ratio, ctx.cfg, ctx.workdir, probe,
            progress, failed,
        )  # fmt: skip
    return Curves(curves, failed, time.perf_counter() - t1)


def _capped_curves(
    ctx: RunContext, a: Analysis, progress: Progress | None, shared: Curves | None
) -> tuple[Curves, dict[str, np.ndarray]]:
    """PRO's curves as measured (``shared`` when a family measured them once, for its largest ratio) and the
    same curves cut to this budget's cap (:func:`onnx_poem.allocation.capped_curves`): every PRO allocation,
    by MACs or by latency, spends from the cut ones."""
    measured = shared if shared is not None else measure_curves(ctx, a, progress)
    return measured, capped_curves(a.free, measured.curves, a.ratio)


def allocate(ctx: RunContext, a: Analysis, progress: Progress | None, shared: Curves | None = None) -> Allocation:
    """Atoms to keep per group: one ratio everywhere (uniform), or PRO's by error per MAC at the output
    (from ``shared`` curves when a family of budgets measured them once)."""
    cfg = ctx.cfg
    ratios = {g.id: a.ratio for g in a.free}
    failed: dict[str, str] = {}
    pro_seconds = None
    curves = None
    if a.latency_target is not None and a.free and a.ratio > 0:
        return _allocate_latency(ctx, a, progress, shared)
    if cfg.allocation == "pro" and a.free and a.ratio > 0:
        target = a.target if a.target is not None else a.table.predict(a.free, keep_counts(a.free, a.ratio))
        measured, curves = _capped_curves(ctx, a, progress, shared)
        failed = dict(measured.failed)
        t1 = time.perf_counter()
        kept_by_pro = pro_keeps(a.free, curves, a.table, target, step=a.step)
        ratios = {g.id: 1.0 - kept_by_pro[g.id] / g.channels for g in a.free}
        pro_seconds = time.perf_counter() - t1 + (measured.seconds if shared is None else 0.0)
    quotas = {g.id: region_keeps(g, ratios[g.id], a.step) for g in a.free}
    return Allocation(quotas, _keeps(a, quotas), failed, pro_seconds, curves)


def _allocate_latency(ctx: RunContext, a: Analysis, progress: Progress | None, shared: Curves | None) -> Allocation:
    """A latency budget: PRO's error curves spent per measured second saved (or one uniform ratio), the
    allocation's whole model timed at its widths and the predicted target corrected until it measures at most
    the target (:func:`onnx_poem.latency.fit_target`)."""
    assert a.latency_table is not None and a.timing is not None and a.latency_target is not None
    table, timing, failed, curves = a.latency_table, a.timing, dict[str, str](), None
    t1 = time.perf_counter()
    if ctx.cfg.allocation == "pro":
        measured, curves = _capped_curves(ctx, a, progress, shared)
        failed = dict(measured.failed)

    def uniform(target: float) -> dict[str, np.ndarray]:
        r = ratio_for_latency(a.free, table, target, a.step)
        return {g.id: region_keeps(g, r, a.step) for g in a.free}

    def pro(cost: Callable[[], Any], step: int) -> Callable[[float], dict[str, np.ndarray]]:
        def allocate(target: float) -> dict[str, np.ndarray]:
            assert curves is not None
            kept = pro_keeps(a.free, curves, cost(), target, step=step)
            return {g.id: region_keeps(g, 1.0 - kept[g.id] / g.channels, step) for g in a.free}

        return allocate

    timed: dict[bytes, float] = {}

    def measure(quotas: dict[str, np.ndarray]) -> float:
        key = b"".join(np.asarray(quotas[g.id], dtype=np.int64).tobytes() for g in a.free)
        if key not in timed:
            timed[key] = timing.ratio(width_model(ctx.view, a.groups, quotas))
        return timed[key]

    candidates: list[tuple[str, Callable[[float], dict[str, np.ndarray]]]]
    if curves is None:
        candidates = [(f"uniform, latency table, step {a.step}", uniform)]
    else:
        candidates = [
            (f"PRO by latency table, step {a.step}", pro(lambda: LatencyCost(a.free, table), a.step)),
            (f"PRO by MACs, step {a.step}", pro(lambda: a.table, a.step)),
        ]
        if a.step > 1 and ctx.cfg.round_to is None:
            candidates.append(("PRO by MACs, step 1", pro(lambda: a.table, 1)))
    with stage("latency"):
        fit, tried = fit_best(
            candidates,
            measure,
            a.latency_target,
            lambda q: 0.0 if curves is None else predicted_error(a.free, curves, q),
        )
    return Allocation(fit.quotas, _keeps(a, fit.quotas), failed, time.perf_counter() - t1, curves, fit, tuple(tried))


def _keeps(a: Analysis, quotas: dict[str, np.ndarray]) -> dict[str, int]:
    """Atoms kept per group: the allocated ``quotas`` summed over regions; the groups kept whole entirely."""
    return {gid: int(q.sum()) for gid, q in quotas.items()} | {
        g.id: g.channels for g in a.coupling.groups if g.id in a.skipped
    }
