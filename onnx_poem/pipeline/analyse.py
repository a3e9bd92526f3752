"""The ``analyse`` stage: coupled groups, the under-determined ones kept whole, MACs per node, the uniform ratio of a
budget, and (``--latency-on`` / ``--target-latency``) the runtime and its per-layer latency table."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from ..allocation import MacsTable, keep_counts, ratio_for_macs, underdetermined_outputs
from ..coupling import ChannelGroup, find_groups
from ..errors import UsageError, one_line
from ..graph import GraphView
from ..latency import (
    LatencyTable,
    Runtime,
    Timing,
    cache_dir,
    cache_key,
    load_cached,
    measure_table,
    probe_step,
    save_cached,
)
from ..modelio import digest
from ..report import node_macs
from ..timing import stage
from .context import Analysis, RunContext, fixed_batches

logger = logging.getLogger(__name__)


def analyse(ctx: RunContext) -> Analysis:
    """Groups, the under-determined ones kept whole, MACs per node, and the uniform ratio of a MACs target."""
    cfg = ctx.cfg
    coupling = find_groups(ctx.view, residual=cfg.stream)
    sample = ctx.data.feed([0])
    per_node = node_macs(ctx.model, sample)
    skipped = underdetermined_outputs(ctx.view, coupling.groups, len(ctx.split.fit), cfg.positions)
    free = [g for g in coupling.groups if g.id not in skipped]
    weights = {i: n.input[1] for i, n in enumerate(ctx.view.nodes) if len(n.input) > 1}  # regions a producer writes
    table = MacsTable.build(free, per_node, weights)
    groups = {g.id: g for g in coupling.groups}
    step = cfg.round_to or 1
    timing = lat_table = lat_target = None
    if cfg.latency_on is not None or cfg.latency_target:
        with stage("latency"):
            timing, lat_table = _latency(ctx, groups, free)
        step = cfg.round_to or (lat_table.step if lat_table is not None else 1)
    ratio, target = cfg.ratio, cfg.target_macs
    macs = sum(per_node.values())
    original_nodes = node_macs(ctx.original, sample) if ctx.transformed else per_node
    macs_original = sum(original_nodes.values())
    if lat_table is not None and timing is not None:
        lat_target = cfg.target_latency or 1e-3 * float(cfg.target_latency_ms or 0.0) / timing.original_seconds
        # where PRO probes its curves and the uniform starting point: the MACs fraction equal to the latency
        # target (the table's prediction of whole-model latency is only a guide: the allocation is timed)
        probe_at = lat_target * macs_original / macs if ctx.transformed else lat_target
        ratio = ratio_for_macs(free, table, probe_at, step) if free and probe_at < 1.0 else 0.0
    elif ratio is None or ctx.transformed:
        if target is None:  # --residual srn or --hidden with --ratio: the MACs that ratio leaves on the original
            target = _original_fraction(ctx, float(ratio or 0.0), original_nodes)
        # a fraction of the analysed model (serialised: more MACs, sliced: fewer); nothing asked, nothing pruned
        if ctx.transformed:
            target = target * macs_original / macs if target < 1.0 else 1.0
        ratio = ratio_for_macs(free, table, target, step) if free and target < 1.0 else 0.0
    return Analysis(
        coupling, groups, free, skipped, per_node, table, ratio, sample, step, timing, lat_table, lat_target, target,
        macs_original,
    )  # fmt: skip


def _original_fraction(ctx: RunContext, ratio: float, original_nodes: Mapping[int, int]) -> float:
    """The MACs fraction of the original that removing ``ratio`` of every block-internal group's units leaves
    (how ``--ratio`` reads with ``--residual srn``, whose serialised model has more MACs and other groups)."""
    if ratio <= 0:
        return 1.0
    view = GraphView.build(ctx.original, input_shapes=ctx.data.sample_shapes())
    groups = find_groups(view, residual=False).groups
    return MacsTable.build(groups, original_nodes).predict(groups, keep_counts(groups, ratio))


def _latency(
    ctx: RunContext, groups: dict[str, ChannelGroup], free: list[ChannelGroup]
) -> tuple[Timing, LatencyTable | None]:
    """The runtime with the original compiled and timed at ``--batch``; with a latency target, the per-layer
    table too (read from the cache when this model, input shape, runtime and machine were measured before)."""
    cfg = ctx.cfg
    runtime = Runtime.parse(cfg.latency_on or "ort-cpu")
    runtime.check()
    for name, fixed in fixed_batches(ctx.model, ctx.data.arrays).items():
        if fixed != cfg.latency_batch:
            raise UsageError(f"--batch {cfg.latency_batch}: the model's input {name!r} has a fixed batch of {fixed}")
    idx = np.arange(min(len(ctx.data), cfg.latency_batch))
    first = ctx.data.feed(idx)
    # the samples repeated up to --batch; an input given once for every batch (a recurrent state) stays as it is
    feed = {
        k: np.resize(v, (cfg.latency_batch, *v.shape[1:])) if v.ndim and v.shape[0] == len(idx) else v
        for k, v in first.items()
    }
    timing = Timing.start(runtime, ctx.original, feed)
    if not cfg.latency_target:
        return timing, None
    path = cache_dir(cfg.latency_cache) / f"{cache_key(digest(ctx.model), feed, runtime, free, cfg.round_to)}.json"
    lat = load_cached(path)
    if lat is not None:
        lat = replace(lat, seconds=0.0)
        logger.info("latency table read from %s", path)
    else:
        t0 = time.perf_counter()
        step, probe = (cfg.round_to, {}) if cfg.round_to else probe_step(ctx.view, groups, free, timing)
        lat = measure_table(ctx.view, groups, free, feed, runtime, step, probe)
        lat = replace(lat, seconds=time.perf_counter() - t0)
        try:
            save_cached(path, lat)
            logger.info("latency table measured in %.1f s (cached at %s)", lat.seconds, path)
        except OSError as e:  # the cache saves time next run; a cache that cannot be written stops nothing
            logger.warning("latency table not cached (%s): %s", path.parent, one_line(e))
    return timing, lat
