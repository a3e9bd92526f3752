"""The ``analyse`` stage: coupled groups, the under-determined ones kept whole, MACs per node, the uniform ratio of a
budget, and (``--latency-on`` / ``--target-latency``) the runtime and its per-layer latency table."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from ..allocation import MacsTable, keep_counts, ratio_for_macs, underdetermined_outputs
from ..coupling import ChannelGroup, find_groups
from ..coupling.refit import reader_refits, refit_groups
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
from ..solvers import RECONSTRUCTION
from ..timing import stage
from .context import Analysis, RunContext, batch_chunks, fixed_batches

logger = logging.getLogger(__name__)

#: reconstructions that refit a stream reader (RESULTS.md [R] 32): POEM's and least squares (REAP)
REFITTING = ("poem", "ls")


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
    refits = _refits(ctx, coupling.groups)
    groups |= refit_groups(refits)
    return Analysis(
        coupling, groups, free, skipped, per_node, table, ratio, sample, step, timing, lat_table, lat_target, target,
        macs_original, refits,
    )  # fmt: skip


def _refits(ctx: RunContext, groups: Sequence[ChannelGroup]) -> dict[str, tuple[ChannelGroup, ...]]:
    """The stream readers refitted before each group (:mod:`onnx_poem.coupling.refit`): in cascade mode, with a
    reconstructing least-squares method (POEM, REAP), where the residual streams keep their channels."""
    cfg = ctx.cfg
    if not cfg.refit_readers or cfg.mode != "cascade" or cfg.stream or RECONSTRUCTION[cfg.method] not in REFITTING:
        return {}
    return reader_refits(ctx.view, groups)


#: [R, memory] the tensors one calibration batch hands the statistics (every consumer input, output and residual
#: offset of the group being collected) at most this many bytes
BATCH_BYTES = 256 * 2**20


def sized_batches(ctx: RunContext, analysis: Analysis) -> RunContext:
    """``ctx`` with batches small enough that no group's calibration tensors of one batch exceed
    :data:`BATCH_BYTES` (fewer samples per batch than ``batch_size`` (32) only where they would).

    [R, memory] A group's collection holds, per batch, the inputs and outputs of all its consumers, and
    onnxruntime's intermediates beside them.  In a torchvision DenseNet-121 every layer of a dense block reads a
    ``Concat`` of all earlier ones, so the first block's group has seven consumers whose tensors take 25 MB per
    sample: 809 MB per batch of 32, and a 3.1 GB peak (issue 11's target for it: 2.1 GB).  Batches of 10 there;
    the six benchmark models, ResNet-50 (8 MB per sample), BERT-base and the mobile models keep 32.  A model
    exported with a fixed batch keeps it.
    """
    per = max((_sample_bytes(ctx.view, g) for g in analysis.free), default=0)
    size = min(ctx.cfg.batch_size, max(1, BATCH_BYTES // per)) if per else ctx.cfg.batch_size
    if size == ctx.cfg.batch_size or fixed_batches(ctx.model, ctx.data.arrays):
        return ctx
    logger.info("batches of %d samples: a group's calibration tensors take %.0f MB per sample", size, per / 1e6)
    return replace(ctx, cfg=replace(ctx.cfg, batch_size=size), chunks=batch_chunks(ctx.split, size))


def _sample_bytes(view: GraphView, g: ChannelGroup) -> int:
    """Bytes per sample of the tensors group ``g``'s collection takes from one batch (shapes with an unknown
    dimension count it as 1; float32 where the type is not known)."""
    names = {t for c in g.consumers for t in (c.input, c.output, c.offset) if t}
    total = 0
    for name in names:
        shape = view.shapes.get(name)
        if not shape:
            continue
        size = int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]], dtype=np.int64))
        total += size * view.dtypes.get(name, np.dtype(np.float32)).itemsize
    return total


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
