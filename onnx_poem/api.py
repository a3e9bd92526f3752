"""Orchestration: load → couple → calibrate → allocate → solve → rewrite → verify → report.

Cascade mode (default): groups are solved in topological order of their
producers; the inputs ``x̂`` of a group's consumers come from the model with
all earlier decisions applied, the targets from the original model.
Parallel mode: every group sees the original model's inputs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .allocation import (
    MacsTable,
    keep_counts,
    predicted_error,
    pro_keeps,
    ratio_for_macs,
    region_keeps,
    underdetermined_outputs,
)
from .calibration.augment import augment_fit
from .calibration.sources import CalibrationData, ImageOptions, load_calibration
from .calibration.split import Split, split_samples
from .cascade import Current, Stream, cut_position
from .config import ALLOCATIONS, AUTO_CANDIDATES, SERIALISED_FORMS, PruneConfig
from .coupling import ChannelGroup, Coupling, find_groups
from .errors import UsageError, VerificationError, one_line
from .fold import fold_constants
from .graph import GraphView, check_model, check_structure, declared_shape, load_model, release_segments, trim_heap
from .hidden import Measured, NotSliceable, Sliced, measure, slice_measured
from .latency import (
    Fit,
    LatencyCost,
    LatencyTable,
    Runtime,
    Timing,
    cache_dir,
    cache_key,
    fit_best,
    load_cached,
    measure_table,
    probe_step,
    ratio_for_latency,
    save_cached,
)  # fmt: skip
from .latency.widths import width_model
from .modelio import copy_model, digest, infer_or_keep, load_checked
from .plan import PrunePlan
from .planfile import PlanContext
from .pro import PROBE_SAMPLES, error_curves
from .replay import apply_saved_plan
from .report import LayerReport, PruneReport, count_macs, count_params, curve_points, group_rows, node_macs
from .rewrite import apply_plan, rewritten
from .solve import solve_group
from .srn import Serialised, serialise
from .threads import limit_threads
from .timing import Clock, bind, stage
from .verify import Agreement, sample_errors, session, verify

__all__ = ["ALLOCATIONS", "PruneConfig", "PruneResult", "apply_saved_plan", "prune", "run", "run_family"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


def prune(
    model: onnx.ModelProto | str | Path,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None = None,
    method: str = "poem",
    image_options: ImageOptions | None = None,
    verify_data: str | Path | Mapping[str, np.ndarray] | np.ndarray | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune ``model`` structurally and reconstruct the remaining weights.

    Args:
        model: a ``ModelProto`` (not modified) or a path.
        ratio: pruning budget ``0 <= ratio < 1``: with ``allocation="uniform"`` the fraction of the
            units of every prunable group to remove; with ``"pro"`` (default) the same MACs, spread
            over the groups by their measured error per MAC (:func:`onnx_poem.allocation.pro_keeps`).
        target_macs: instead of ``ratio``, the MACs to reach as a fraction of the original
            (the uniform ratio that reaches it is searched).
        calib: calibration data (``.npz``/``.npy``/image folder path, arrays); ``None`` needs
            ``synthetic=True`` (synthetic inputs, which wreck accuracy).
        method: selection/reconstruction method, one of :data:`onnx_poem.solvers.METHODS`.
        image_options: preprocessing for an image folder.
        verify_data: a separate verification set (same formats as ``calib``; labels from an npz array
            ``labels`` or class sub-folders); then every calibration sample goes to fit and selection.
        progress: called as ``progress(done, total, group_id)``.
        **options: further :class:`PruneConfig` fields (``mode``, ``samples``, ``seed``, ...).

    Returns:
        The pruned model and the run report.
    """
    if options.get("dry_run"):
        raise UsageError("prune() does not do dry runs: call run(..., dry_run=True)")
    result = run(
        model,
        ratio=ratio,
        target_macs=target_macs,
        calib=calib,
        method=method,
        image_options=image_options,
        verify_data=verify_data,
        progress=progress,
        **options,
    )
    assert result.model is not None  # only dry runs return none
    return result.model, result.report


@dataclass(frozen=True)
class PruneResult:
    """What a run produced: the pruned model (``None`` for a dry run), its report, the plan that was
    applied and what the plan was computed for (to save it with :func:`onnx_poem.planfile.encode`)."""

    model: onnx.ModelProto | None
    report: PruneReport
    plan: PrunePlan
    context: PlanContext


def run(
    model: onnx.ModelProto | str | Path,
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None = None,
    method: str = "poem",
    image_options: ImageOptions | None = None,
    verify_data: str | Path | Mapping[str, np.ndarray] | np.ndarray | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> PruneResult:
    """:func:`prune`, returning the plan and its context too; with ``dry_run=True`` only the analysis,
    calibration and allocation run (the report gives the kept counts and the predicted MACs)."""
    cfg = PruneConfig.of(ratio=ratio, target_macs=target_macs, method=method, **options)
    cfg.validate()
    if cfg.dry_run and cfg.residual == "auto":
        raise UsageError("--residual auto measures pruned models: a dry run cannot; give a fixed --residual")
    t0 = time.perf_counter()
    with limit_threads(cfg.threads), bind(Clock()) as clock, stage("other"):
        result = _prune(model, cfg, calib, image_options, verify_data, progress)
    result.report.timings.update(clock.timings(t0))
    return result


def run_family(
    model: onnx.ModelProto | str | Path,
    ratios: Sequence[float],
    *,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None = None,
    method: str = "poem",
    image_options: ImageOptions | None = None,
    verify_data: str | Path | Mapping[str, np.ndarray] | np.ndarray | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> list[PruneResult]:
    """One pruned model per ratio of ``ratios``, from one load, one analysis and one PRO curve pass.

    The calibration data, its split and PRO's per-group error curves do not depend on the budget:
    they are computed once (the curves probed around the largest ratio, which covers the others'
    range) and each budget is then allocated from them, solved, rewritten and verified.  The
    largest ratio's model is byte-identical to a separate :func:`run` at that ratio; the others
    may differ from separate runs by where PRO probed its curves.  Reports carry their own solve
    and verification times; the shared stages are timed in the first report (``family_shared``).
    """
    if not ratios or len(set(ratios)) != len(ratios):
        raise UsageError(f"give distinct ratios for a family, got {list(ratios)}")
    if options.get("dry_run") or any(
        options.get(k) is not None for k in ("target_macs", "target_latency", "target_latency_ms")
    ):
        raise UsageError("a family takes --ratio values only (no --target-macs, --target-latency or --dry-run)")
    cfgs = [PruneConfig.of(ratio=r, method=method, **options) for r in ratios]
    for cfg in cfgs:
        cfg.validate()
    if cfgs[0].residual == "auto":
        raise UsageError("a family shares one analysis: give a fixed --residual (internal, stream, srn or project)")
    if cfgs[0].hidden_auto:
        raise UsageError("a family shares one analysis: give a fixed --hidden fraction, not auto")
    t0 = time.perf_counter()
    results: list[PruneResult] = []
    with limit_threads(cfgs[0].threads), bind(Clock()) as shared_clock, stage("other"):
        inputs = _inputs(model, cfgs[0], calib, image_options, verify_data)
        with tempfile.TemporaryDirectory(prefix="onnx-poem-") as tmp:
            base = _context(inputs, Path(tmp))
            top = max(range(len(cfgs)), key=lambda i: cfgs[i].ratio or 0.0)
            ctx_top = replace(base, cfg=replace(base.cfg, ratio=cfgs[top].ratio))
            analysis_top = _analyse(ctx_top)
            curves = None
            if ctx_top.cfg.allocation == "pro" and analysis_top.free and analysis_top.ratio > 0:
                curves = _curves(ctx_top, analysis_top, progress)
            shared_seconds = shared_clock.timings(t0)
            for i, cfg in enumerate(cfgs):
                t1 = time.perf_counter()
                with bind(Clock()) as clock, stage("other"):
                    workdir = base.workdir / f"family_{i}"  # each solve's cached frontiers in a folder of its own
                    workdir.mkdir()
                    ctx = replace(base, cfg=replace(base.cfg, ratio=cfg.ratio), workdir=workdir)
                    analysis = analysis_top if cfg is cfgs[top] else _analyse(ctx)
                    allocation = _allocate(ctx, analysis, progress, curves)
                    solved = _solve(ctx, analysis, allocation, progress)
                    verified = _verify(ctx, analysis, solved)
                    report = _report(ctx, analysis, allocation, verified)
                report.timings.update(clock.timings(t1))
                results.append(PruneResult(verified.model, report, verified.plan, _plan_context(ctx)))
    results[0].report.timings["family_shared"] = shared_seconds["total"]
    return results


def _prune(
    model: onnx.ModelProto | str | Path,
    cfg: PruneConfig,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    image_options: ImageOptions | None,
    verify_data: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    progress: Progress | None,
) -> PruneResult:
    """The stages of a run, in order; each returns a typed result, the report is built once at the end."""
    with stage("load"):
        inputs = _inputs(model, cfg, calib, image_options, verify_data)
    if cfg.residual == "auto":
        return _prune_auto(inputs, progress)
    if cfg.hidden_auto:
        return _prune_hidden_auto(inputs, progress)
    with tempfile.TemporaryDirectory(prefix="onnx-poem-") as tmp:
        ctx = _context(inputs, Path(tmp))
        analysis = _analyse(ctx)
        allocation = _allocate(ctx, analysis, progress)
        if ctx.cfg.dry_run:
            return PruneResult(None, _report(ctx, analysis, allocation, None), PrunePlan(), _plan_context(ctx))
        solved = _solve(ctx, analysis, allocation, progress)
    verified = _verify(ctx, analysis, solved)
    return PruneResult(verified.model, _report(ctx, analysis, allocation, verified), verified.plan, _plan_context(ctx))


def _prune_auto(inputs: _Inputs, progress: Progress | None) -> PruneResult:
    """``--residual auto``: the model pruned with each policy of :data:`AUTO_CANDIDATES` that applies (``stream``
    only where residual adds join prunable channels, ``project`` only where a shortcut can become a 1x1 conv, at
    the same budget against the original's MACs); a later candidate replaces the one kept so far only when its
    relative output error on the fitting and selection samples is lower by more than two standard errors of the
    paired per-sample difference (``internal``, the measured default, needs no evidence); the kept model is then
    verified on the verification samples, which the choice never reads, as usual.

    [R] PRO's predicted error (the sum of per-group curves) ranked the residual streams best on both CIFAR
    ResNets, where they measured 3 points worse: the choice is measured on pruned models instead.  Without the
    margin, the mean error alone chose streams on EfficientNet-Lite0 in two seeds of three, 1 and 2 points below
    internal in accuracy.  On the 64 selection samples alone (of 512) the margin kept ``internal`` on two ResNet-20
    seeds at half the MACs where ``project`` was 1.8 and 2.7 points better (paired t −0.7 and −1.0); on the fitting
    and selection samples the same difference reads t −6.5 and −7.0 (benchmarks/residual_srn.md).
    """
    with tempfile.TemporaryDirectory(prefix="onnx-poem-") as tmp:
        base = _context(inputs, Path(tmp))  # split, augmented copies, view: shared by the candidates
        tried = _pruned_candidates(_auto_contexts(inputs, base), progress, "--residual auto")
    result, errors = _kept_candidate(tried)
    result.report.residual_auto = errors
    return result


def _pruned_candidates(
    candidates: Iterable[tuple[str, RunContext]], progress: Progress | None, option: str
) -> dict[str, _Tried]:
    """Each candidate context (label → context, in order) analysed, allocated and solved, with its per-sample
    relative output errors on the fitting and selection samples (:func:`_choice_errors`)."""
    tried: dict[str, _Tried] = {}
    for label, ctx in candidates:
        ctx.workdir.mkdir()
        analysis = _analyse(ctx)
        allocation = _allocate(ctx, analysis, progress)
        solved = _solve(ctx, analysis, allocation, progress)
        errors = _choice_errors(ctx, solved.model)
        logger.info("%s: %s: output error %.4f (fitting and selection samples)", option, label, errors.mean())
        tried[label] = (errors, ctx, analysis, allocation, solved)
    return tried


def _kept_candidate(tried: dict[str, _Tried]) -> tuple[PruneResult, dict[str, float]]:
    """The first candidate unless a later one is :func:`clearly_lower` than the one kept so far, verified on the
    verification samples (which the choice never reads), and every candidate's mean error."""
    runs = list(tried.values())
    best = runs[0]
    for t in runs[1:]:
        if clearly_lower(t[0], best[0]):
            best = t
    _, ctx, analysis, allocation, solved = best
    verified = _verify(ctx, analysis, solved)
    report = _report(ctx, analysis, allocation, verified)
    result = PruneResult(verified.model, report, verified.plan, _plan_context(ctx))
    return result, {label: float(t[0].mean()) for label, t in tried.items()}


#: --hidden auto: the fractions of the hidden size tried (0 first: slicing needs the evidence)
HIDDEN_CANDIDATES = (0.0, 0.1, 0.2, 0.3, 0.4)


def _prune_hidden_auto(inputs: _Inputs, progress: Progress | None) -> PruneResult:
    """``--hidden auto``: the model pruned at the same budget with each fraction of :data:`HIDDEN_CANDIDATES` sliced
    first; a fraction replaces the one kept so far only when its relative output error on the fitting and selection
    samples is lower by more than two standard errors of the paired per-sample difference (:func:`clearly_lower`),
    then the kept model is verified on the verification samples, which the choice never reads.  A model whose
    stream cannot be sliced is pruned once, with the reason in the report."""
    with tempfile.TemporaryDirectory(prefix="onnx-poem-") as tmp:
        base = _context(inputs, Path(tmp))  # the split, augmented copies and view shared by the candidates
        tried = _pruned_candidates(_hidden_contexts(base), progress, "--hidden auto")
    result, errors = _kept_candidate(tried)
    result.report.hidden_auto = errors
    return result


def _hidden_contexts(base: RunContext) -> Iterator[tuple[str, RunContext]]:
    """``base`` with each fraction of :data:`HIDDEN_CANDIDATES` sliced, from one measurement of its stream (each in
    a work folder of its own); ``base`` alone, with the reason, when the stream cannot be sliced."""
    with stage("statistics"):
        measured = measure(base.view, base.data, _fit_chunks(base))
    if isinstance(measured, NotSliceable):
        yield "0", replace(base, workdir=base.workdir / "hidden_0", hidden=Sliced(None, reason=measured.reason))
        return
    for fraction in HIDDEN_CANDIDATES:
        ctx = replace(base, workdir=base.workdir / f"hidden_{fraction:g}")
        yield f"{fraction:g}", _sliced(ctx, fraction, measured) if fraction else ctx


def clearly_lower(new: np.ndarray, old: np.ndarray, margin: float = 2.0) -> bool:
    """Per-sample errors ``new`` are lower than ``old`` (the same samples, paired) by more than ``margin``
    standard errors of the mean difference: ``--residual auto``'s evidence for leaving the policy kept so far."""
    d = new - old
    return bool(len(d) > 1 and d.mean() + margin * d.std(ddof=1) / np.sqrt(len(d)) < 0)


def _auto_contexts(inputs: _Inputs, base: RunContext) -> Iterator[tuple[str, RunContext]]:
    """Each policy of :data:`AUTO_CANDIDATES` that changes what is pruned, with its run context: ``stream`` where
    residual adds join prunable channels, a serialised form where it rewrites at least one block (its own model
    and view; the split, the calibration data and its augmented copies are the shared ones)."""
    for policy in AUTO_CANDIDATES:
        cfg = replace(base.cfg, residual=policy)
        workdir = base.workdir / policy  # each solve's cached frontiers in a folder of its own
        form = SERIALISED_FORMS.get(policy)
        if form is not None and base.transformed:
            continue  # serialised from the original: --hidden's slicing would be lost
        if form is not None:
            ser = serialise(inputs.original, form)
            if ser.blocks:
                view = GraphView.build(ser.model, input_shapes=base.data.sample_shapes())
                yield policy, replace(base, cfg=cfg, model=ser.model, serialised=ser, view=view, workdir=workdir)
        elif policy != "stream" or _has_streams(inputs):
            yield policy, replace(base, cfg=cfg, workdir=workdir)


def _has_streams(inputs: _Inputs) -> bool:
    """Residual adds join prunable channels of the model (``--residual stream`` differs from ``internal``)."""
    view = GraphView.build(inputs.model, input_shapes=inputs.data.sample_shapes())
    return any(g.residual for g in find_groups(view, residual=True).groups)


def _choice_errors(ctx: RunContext, pruned: onnx.ModelProto) -> np.ndarray:
    """Per fitting and selection sample (augmented copies included): ``pruned``'s relative squared output error
    against the original (:func:`onnx_poem.verify.sample_errors`)."""
    idx = np.concatenate([ctx.split.fit, ctx.split.select])
    with stage("allocation"):
        return sample_errors(ctx.original, pruned, ctx.data, idx, batch_size=ctx.cfg.batch_size)


@dataclass(frozen=True)
class _Inputs:
    """The loaded inputs of a run."""

    cfg: PruneConfig  # the batch size clamped to a fixed batch dimension of the model
    name: str
    model: onnx.ModelProto  # checked, constant-folded (and serialised with --residual srn): what is pruned
    original: onnx.ModelProto  # checked, constant-folded: what outputs and MACs are compared with
    serialised: Serialised | None  # --residual srn: the blocks serialised and those left
    data: CalibrationData
    checks: CalibrationData | None  # --verify-data
    loaded: onnx.ModelProto | Path  # as loaded (written back when nothing is pruned), or its file (:func:`_reloaded`)


@dataclass(frozen=True)
class RunContext:
    """What every stage of one run reads (nothing writes it)."""

    cfg: PruneConfig
    name: str
    model: onnx.ModelProto  # what is pruned (serialised with --residual srn)
    original: onnx.ModelProto  # what the pruned model is compared with (outputs, MACs, latency)
    serialised: Serialised | None
    data: CalibrationData
    checks: CalibrationData | None
    split: Split
    view: GraphView
    chunks: list[np.ndarray]  # sample indices per batch: the fitting batches, then the selection batches
    workdir: Path
    loaded: onnx.ModelProto | Path  # as loaded, before folding (the result when nothing is pruned), or its file
    hidden: Sliced | None = None  # --hidden: what slicing the hidden size did (``model`` is then the sliced one)

    @property
    def transformed(self) -> bool:
        """What is pruned is not the original model (serialised, or its hidden size sliced): budgets are
        counted against the original's MACs."""
        return self.serialised is not None or (self.hidden is not None and self.hidden.model is not None)

    def unpruned(self) -> onnx.ModelProto:
        """The result when no group is pruned: the sliced model, or the model as loaded."""
        if self.hidden is not None and self.hidden.model is not None:
            return self.model
        return _reloaded(self.loaded)


@dataclass(frozen=True)
class Analysis:
    """``analyse``: the coupled groups, those kept whole (and why), the MACs per node and the uniform ratio."""

    coupling: Coupling
    groups: dict[str, ChannelGroup]
    free: list[ChannelGroup]  # the groups the allocation may prune
    skipped: dict[str, str]
    per_node: dict[int, int]
    table: MacsTable
    ratio: float
    sample: dict[str, np.ndarray]  # one calibration sample (MACs are counted on it)
    step: int = 1  # channel step: --round-to, or the latency table's measured one
    timing: Timing | None = None  # --latency-on / --target-latency: the runtime and the original's latency
    latency_table: LatencyTable | None = None  # --target-latency: the per-layer table
    latency_target: float | None = None  # --target-latency as a fraction of the original's latency
    target: float | None = None  # the MACs budget as a fraction of the analysed model's (None: --ratio's uniform)
    macs_original: int = 0  # the original's MACs (more than the analysed model's with --residual srn)


@dataclass(frozen=True)
class Allocation:
    """``allocate``: atoms to keep per group (and per region), and the groups whose PRO curve failed."""

    quotas: dict[str, np.ndarray]
    keeps: dict[str, int]
    failed: dict[str, str]
    pro_seconds: float | None
    curves: dict[str, np.ndarray] | None = None  # PRO's error curves (for the report)
    latency: Fit | None = None  # --target-latency: the closed loop's allocation and measurement
    latency_tried: tuple[Fit, ...] = ()  # every candidate allocation's closed loop


@dataclass(frozen=True)
class Solved:
    """``solve`` (cascade + rewrite), then ``verify``: the plan, the pruned model, per-layer reports, the groups
    left unpruned after they failed, and the agreement (``None`` before verification)."""

    plan: PrunePlan
    model: onnx.ModelProto
    layers: list[LayerReport]
    failed: dict[str, str]
    agreement: Agreement | None = None
    latency: float | None = None  # the pruned model's latency over the original's (--latency-on)


#: a candidate of --residual auto / --hidden auto: its per-sample errors, context, analysis, allocation and solve
_Tried = tuple[np.ndarray, RunContext, Analysis, Allocation, Solved]


def _context(inputs: _Inputs, workdir: Path) -> RunContext:
    cfg, data = inputs.cfg, inputs.data
    split = split_samples(len(data), seed=cfg.seed, verify=inputs.checks is None)
    if cfg.augment:  # copies of the fitting images only: selection and verification stay real
        data, copies = augment_fit(data, split.fit, cfg.augment, cfg.seed, workdir)
        split = replace(split, fit=np.concatenate([split.fit, copies]))
    view = GraphView.build(inputs.model, input_shapes=data.sample_shapes())
    chunks = [
        idx[i : i + cfg.batch_size] for idx in (split.fit, split.select) for i in range(0, len(idx), cfg.batch_size)
    ]
    ctx = RunContext(
        cfg, inputs.name, inputs.model, inputs.original, inputs.serialised, data, inputs.checks, split, view, chunks,
        workdir, inputs.loaded,
    )  # fmt: skip
    if cfg.hidden <= 0:
        return ctx
    with stage("statistics"):
        measured = measure(view, data, _fit_chunks(ctx))
    if isinstance(measured, NotSliceable):
        return replace(ctx, hidden=Sliced(None, reason=measured.reason))
    return _sliced(ctx, cfg.hidden, measured)


def _fit_chunks(ctx: RunContext) -> list[np.ndarray]:
    """The batches of fitting samples among the run's (the rest are selection samples)."""
    return [c for c in ctx.chunks if np.isin(c, ctx.split.fit).all()]


def _sliced(ctx: RunContext, fraction: float, measured: Measured) -> RunContext:
    """``ctx`` with ``fraction`` of the hidden size sliced (:func:`onnx_poem.hidden.slice_measured`): its model and
    view are the sliced ones."""
    with stage("statistics"):
        sliced = slice_measured(ctx.model, measured, fraction, ctx.cfg.hidden_rotation)
    assert sliced.model is not None  # slice_measured always slices
    view = GraphView.build(sliced.model, input_shapes=ctx.data.sample_shapes())
    return replace(ctx, model=sliced.model, view=view, hidden=sliced)


def _analyse(ctx: RunContext) -> Analysis:
    """Groups, the under-determined ones kept whole, MACs per node, and the uniform ratio of a MACs target."""
    cfg = ctx.cfg
    coupling = find_groups(ctx.view, residual=cfg.stream)
    sample = ctx.data.feed([0])
    per_node = node_macs(ctx.model, sample)
    skipped = underdetermined_outputs(ctx.view, coupling.groups, len(ctx.split.fit), cfg.positions)
    free = [g for g in coupling.groups if g.id not in skipped]
    table = MacsTable.build(free, per_node)
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
    for name, fixed in _fixed_batches(ctx.model, ctx.data.arrays).items():
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


@dataclass(frozen=True)
class Curves:
    """PRO's error curves per group (measured once; a family of budgets shares them) and the groups whose
    curve failed, with why."""

    curves: dict[str, np.ndarray]
    failed: dict[str, str]
    seconds: float


def _curves(ctx: RunContext, a: Analysis, progress: Progress | None) -> Curves:
    """PRO's sensitivity pass: every free group's error curve at the output, probed around ``a.ratio``."""
    split, failed = ctx.split, dict[str, str]()
    t1 = time.perf_counter()
    probe = split.select[:PROBE_SAMPLES] if len(split.select) else split.fit[:PROBE_SAMPLES]
    with stage("allocation"):
        curves = error_curves(
            ctx.view, a.free, a.groups, ctx.data, ctx.chunks, len(split.fit), a.ratio, ctx.cfg, ctx.workdir, probe,
            progress, failed,
        )  # fmt: skip
    return Curves(curves, failed, time.perf_counter() - t1)


def _allocate(ctx: RunContext, a: Analysis, progress: Progress | None, shared: Curves | None = None) -> Allocation:
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
        measured = shared if shared is not None else _curves(ctx, a, progress)
        failed, curves = dict(measured.failed), measured.curves
        t1 = time.perf_counter()
        kept_by_pro = pro_keeps(a.free, measured.curves, a.table, target, step=a.step)
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
        measured = shared if shared is not None else _curves(ctx, a, progress)
        failed, curves = dict(measured.failed), measured.curves

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


def _solve(ctx: RunContext, a: Analysis, alloc: Allocation, progress: Progress | None) -> Solved:
    """The cascade: solve each group on the model with every earlier decision applied, rewrite, check.

    A group whose solve or rewrite fails is left unpruned with the error as its reason; if an
    earlier group's rewrite turns out to be the cause, the failing decisions are dropped first.
    """
    cfg, view, groups = ctx.cfg, ctx.view, a.groups
    # block-internal groups first: a residual group's consumers then see their final inputs,
    # and no group reads a tensor whose channels an earlier decision already removed
    todo = [g for g in a.coupling.groups if alloc.keeps[g.id] < g.channels and not g.residual]
    todo += [g for g in a.coupling.groups if alloc.keeps[g.id] < g.channels and g.residual]
    streams = (
        Stream(view, ctx.data, ctx.chunks, ctx.workdir, "orig"),
        Stream(view, ctx.data, ctx.chunks, ctx.workdir, "cur"),
    )
    probe_feed = ctx.data.feed(ctx.split.fit[:1])
    failed = dict(alloc.failed)  # group id → why it was left unpruned after it failed
    plan, layers = PrunePlan(), []
    # the model with ``plan`` applied (checked), reused as the cascade's current model
    applied: onnx.ModelProto | None = ctx.model
    current: Current | None = None
    for done, g in enumerate(todo):
        if progress:
            progress(done, len(todo), g.id)
        nxt = cut_position(view, todo[done + 1]) if done + 1 < len(todo) else None
        for attempt in (0, 1):
            if applied is None:  # dropped before a rewrite that failed
                applied = apply_plan(view, groups, plan) if plan.decisions else ctx.model
            current = (
                Current(applied, view.weights.excluding(rewritten(view, groups, plan)))
                if cfg.mode == "cascade" and applied is not ctx.model
                else Current.original(view)
            )
            try:
                decision, group_layers = solve_group(
                    view, current, g, alloc.quotas[g.id], streams, nxt, len(ctx.split.fit), cfg, len(plan.decisions)
                )
                trial = plan.extended(decision)
                # the rewrite builds from the original: one pruned copy of the model in memory, not two
                current = applied = None
                # [R, memory] the arrays are shared within one group's statistics and converted again (the next
                # segment's only) for the next group: a 2.5 GB MLP's solve peaked at 8.3 GB instead of 10.3 GB.
                # PRO's curves keep theirs (released per curve, BERT-base's PRO peak rose from 2757 to 2959 MB)
                view.weights.release()
                release_segments()  # the segment graphs imported so far still refer to that copy
                with stage("rewrite"):
                    candidate = apply_plan(view, groups, trial)
                    check_structure(candidate, what="the rewrite", error=VerificationError)
            except Exception as e:
                if attempt == 0 and plan.decisions and cfg.mode == "cascade" and _fails(view, groups, plan, probe_feed):
                    plan = _drop_failing(view, groups, plan, probe_feed, failed)  # an earlier group's rewrite
                    applied = apply_plan(view, groups, plan) if plan.decisions else ctx.model
                    streams[1].reset()
                    continue
                failed[g.id] = one_line(e)
                logger.warning("group %s left unpruned: %s", g.id, failed[g.id])
                break
            plan, applied = trial, candidate
            del candidate  # the only reference to the pruned copy is ``applied``
            layers.extend(group_layers)
            break
    if progress:
        progress(len(todo), len(todo), "")
    del streams, current
    view.weights.release()  # the sessions that shared the arrays are gone
    release_segments()
    if not plan.decisions:
        pruned = infer_or_keep(ctx.unpruned())
    else:
        pruned = infer_or_keep(applied if applied is not None else apply_plan(view, groups, plan))
    return Solved(plan, pruned, layers, failed)


def _verify(ctx: RunContext, a: Analysis, solved: Solved) -> Solved:
    """Agreement on ``--verify-data`` when given, else on the verification split; a model that fails
    verification loses the decisions that break it (found one by one) and is verified again."""
    try:
        agreement = _agreement(ctx, solved.model)
    except VerificationError:
        if not solved.plan.decisions:
            raise
        failed = dict(solved.failed)
        plan = _drop_failing(ctx.view, a.groups, solved.plan, ctx.data.feed(ctx.split.fit[:1]), failed)
        model = infer_or_keep(apply_plan(ctx.view, a.groups, plan) if plan.decisions else ctx.unpruned())
        solved = Solved(plan, model, solved.layers, failed)
        agreement = _agreement(ctx, model)
    layers = [la for la in solved.layers if la.group not in solved.failed]
    latency = None
    if a.timing is not None:
        with stage("latency"):
            latency = a.timing.ratio(solved.model) if solved.plan.decisions else 1.0
    return Solved(solved.plan, solved.model, layers, solved.failed, agreement, latency)


def _agreement(ctx: RunContext, pruned: onnx.ModelProto) -> Agreement:
    cfg = ctx.cfg
    with stage("verification"):
        if ctx.checks is not None:
            return verify(ctx.original, pruned, ctx.checks, np.arange(len(ctx.checks)), batch_size=cfg.batch_size,
                          source="--verify-data")  # fmt: skip
        return verify(ctx.original, pruned, ctx.data, ctx.split.verify, batch_size=cfg.batch_size,
                      source="verification split")  # fmt: skip


def _report(ctx: RunContext, a: Analysis, alloc: Allocation, solved: Solved | None) -> PruneReport:
    """The run's report, from the stages' results (``solved`` is ``None`` for a dry run)."""
    cfg = ctx.cfg
    report = PruneReport(
        model=ctx.name,
        method=cfg.method,
        ratio=a.ratio if cfg.ratio is None else cfg.ratio,
        mode=cfg.mode,
        seed=cfg.seed,
        calibration_samples=len(ctx.split.fit) // (1 + cfg.augment),
        augmented_samples=len(ctx.split.fit) - len(ctx.split.fit) // (1 + cfg.augment),
        selection_samples=len(ctx.split.select),
        verification_samples=len(ctx.checks) if ctx.checks is not None else len(ctx.split.verify),
        synthetic_calibration=ctx.data.synthetic,
        target_macs=cfg.target_macs,
        allocation=cfg.allocation,
        damping=cfg.damping,
    )
    report.unprunable = [{"where": u.where, "reason": u.reason} for u in a.coupling.unprunable]
    report.unprunable += [{"where": gid, "reason": why} for gid, why in a.skipped.items()]
    report.macs_before, report.params_before = a.macs_original, count_params(ctx.original)
    report.residual = cfg.residual
    if ctx.serialised is not None:
        report.serialised = {"blocks": list(ctx.serialised.blocks), "left": dict(ctx.serialised.left)}
    if ctx.hidden is not None:
        report.hidden = ctx.hidden.as_dict()
    if not a.coupling.groups:
        report.warnings.append("no prunable layer found")
    if alloc.pro_seconds is not None:
        report.timings["pro_total"] = alloc.pro_seconds
    if alloc.curves:
        report.curves = {
            gid: curve_points(curve, a.groups[gid].channels - alloc.keeps[gid])
            for gid, curve in alloc.curves.items()
            if len(curve)
        }
    keeps = dict(alloc.keeps)
    report.latency = _latency_report(a, alloc, solved, keeps)
    if solved is None:
        report.groups = group_rows(ctx.view, a.coupling.groups, keeps)
        macs = sum(a.per_node.values())  # the analysed model's (serialised with --residual srn)
        report.macs_after = round(macs * a.table.predict(a.free, {g.id: keeps[g.id] for g in a.free}))
        report.warnings.append("dry run: nothing was solved or written; MACs after are predicted")
        report.dry_run = True
        return report
    for gid, why in solved.failed.items():
        keeps[gid] = a.groups[gid].channels
        report.unprunable.append({"where": gid, "reason": f"left unpruned: {why}"})
    report.layers = list(solved.layers)
    report.groups = group_rows(ctx.view, a.coupling.groups, keeps)
    if solved.agreement is not None:
        report.set_agreement(solved.agreement)
    report.macs_after, report.params_after = count_macs(solved.model, a.sample), count_params(solved.model)
    srn_asked = None if not ctx.transformed or a.target is None else a.target * sum(a.per_node.values())
    report.warnings += _budget_warnings(
        a.coupling.groups, a.per_node, a.ratio, cfg, report.macs_ratio, a.skipped,
        None if srn_asked is None else srn_asked / a.macs_original,
    )  # fmt: skip
    if a.latency_target is not None and solved.latency is not None and solved.latency > a.latency_target + 0.01:
        report.warnings.append(
            f"latency budget not met: asked for {a.latency_target:.3f} of the original's latency on "
            f"{report.latency['runtime']}, measured {solved.latency:.3f}"
        )
    return report


def _latency_report(a: Analysis, alloc: Allocation, solved: Solved | None, keeps: dict[str, int]) -> dict[str, Any]:
    """What the report says about latency (see :attr:`PruneReport.latency`)."""
    if a.timing is None:
        return {}
    out: dict[str, Any] = {
        "runtime": a.timing.runtime.name,
        "batch": next(iter(a.timing.feed.values())).shape[0] if a.timing.feed else 1,
        "original_ms": 1e3 * a.timing.original_seconds,
    }
    if solved is not None and solved.latency is not None:
        out |= {"measured": solved.latency, "pruned_ms": 1e3 * a.timing.original_seconds * solved.latency}
    if a.latency_table is not None and a.latency_target is not None:
        out |= {
            "target": a.latency_target,
            "predicted": a.latency_table.predict({g.id: keeps[g.id] for g in a.free}),
            "step": a.step,
            "table_seconds": a.latency_table.seconds,
            "loop": [[f.label, *p] for f in alloc.latency_tried for p in f.history],
        }
        if alloc.latency is not None:
            out |= {"widths_measured": alloc.latency.measured, "chosen": alloc.latency.label}
            out["candidates"] = [
                {"label": f.label, "measured": f.measured, "predicted_error": f.error} for f in alloc.latency_tried
            ]
    return out


def _plan_context(ctx: RunContext) -> PlanContext:
    """What a saved plan of this run applies to."""
    return PlanContext(
        model_name=ctx.name,
        model_sha256=digest(ctx.model),
        input_shapes={k: [int(x) for x in v] for k, v in ctx.data.sample_shapes().items()},
        residual=ctx.cfg.residual,
        settings=_settings(ctx.cfg),
    )


def _settings(cfg: PruneConfig) -> dict[str, Any]:
    """The run's settings as plain data (recorded in a saved plan)."""
    return {k: v for k, v in asdict(cfg).items() if k != "dry_run"}


def _inputs(
    model: onnx.ModelProto | str | Path,
    cfg: PruneConfig,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    image_options: ImageOptions | None,
    verify_data: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
) -> _Inputs:
    """The checked, constant-folded model, its name, the calibration data, the ``--verify-data`` set and the
    config with the batch size clamped to a fixed batch dimension of the model."""
    source = model
    loaded, name = load_checked(source)
    original = model = fold_constants(loaded)
    # [R, memory] a model read from its file here is read again in the rare run that prunes nothing, instead of
    # being held beside its folded copy all run long (BERT-base: 0.41 GB of the peak)
    keep = original is loaded or isinstance(source, onnx.ModelProto)
    as_loaded: onnx.ModelProto | Path = loaded if keep else Path(source)
    del loaded
    trim_heap()  # folding's session and copies are freed: give their memory back before the run grows
    serialised = None
    if cfg.serialised_form is not None:
        serialised = serialise(original, cfg.serialised_form)
        model = serialised.model
    data = load_calibration(
        model, calib, samples=cfg.samples, seed=cfg.seed, image_options=image_options, synthetic=cfg.synthetic
    )
    checks = None
    if verify_data is not None:
        checks = load_calibration(
            model, verify_data, samples=VERIFY_DATA_MAX, seed=cfg.seed, image_options=image_options
        )
    fixed = list(_fixed_batches(model, data.arrays).values())
    if fixed and min(fixed) < cfg.batch_size:  # a model exported for a fixed batch (often 1)
        cfg = replace(cfg, batch_size=min(fixed))
    return _Inputs(cfg, name, model, original, serialised, data, checks, as_loaded)


def _reloaded(loaded: onnx.ModelProto | Path) -> onnx.ModelProto:
    """A copy of the model as loaded (:attr:`RunContext.loaded`), read again from its file if it was not kept."""
    return load_model(loaded) if isinstance(loaded, Path) else copy_model(loaded)


def _fixed_batches(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, int]:
    """Input name → its declared batch size, for the inputs among ``names`` exported with a fixed one."""
    out = {}
    for name in names:
        dims = declared_shape(model, name)
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            out[name] = dims[0]
    return out


def _fails(view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan, feed: dict[str, np.ndarray]) -> str:
    """Why the model with ``plan`` applied fails the checker or an onnxruntime run on ``feed`` ("" if it does not)."""
    try:
        m = apply_plan(view, groups, plan)
        check_model(m, what="the rewrite", error=VerificationError)
        session(m).run(None, feed)
    except Exception as e:
        return one_line(e)
    return ""


def _drop_failing(
    view: GraphView,
    groups: dict[str, ChannelGroup],
    plan: PrunePlan,
    feed: dict[str, np.ndarray],
    failed: dict[str, str],
) -> PrunePlan:
    """``plan`` without the decisions whose rewrite breaks the model (each recorded in ``failed``).

    Decisions are added back one at a time in order; one that makes the model fail
    the checker or an onnxruntime run is dropped (a failure found late: a linear
    search, run only on this error path).
    """
    kept = PrunePlan()
    for d in plan.decisions:
        why = _fails(view, groups, kept.extended(d), feed)
        if why:
            failed[d.group_id] = why
            logger.warning("group %s left unpruned: %s", d.group_id, why)
        else:
            kept = kept.extended(d)
    return kept


#: --verify-data: at most this many samples are read
VERIFY_DATA_MAX = 100_000


def _budget_warnings(
    groups: Sequence[ChannelGroup],
    per_node: Mapping[int, int],
    ratio: float,
    cfg: PruneConfig,
    reached: float,
    skipped: Mapping[str, str],
    srn_asked: float | None = None,
) -> list[str]:
    """Warnings when the reached MACs fraction is more than one point above what was asked for, or (a MACs target)
    more than two points below it.

    Asked for: ``--target-macs``, or with ``--ratio`` the MACs that removing that fraction of every
    prunable group (the under-determined ones included, unrounded) would leave.
    """
    if cfg.latency_target:
        return []  # a latency budget is checked by measurement (its own warning)
    if srn_asked is not None:  # --residual srn: the budget was converted to the original's MACs already
        asked = srn_asked
        what = f"--target-macs {cfg.target_macs:g}" if cfg.target_macs is not None else f"--ratio {cfg.ratio:g}"
        what += f" (MACs {asked:.3f} of the original)"
    elif cfg.target_macs is not None:
        asked, what = cfg.target_macs, f"--target-macs {cfg.target_macs:g}"
    elif groups and ratio > 0:
        asked = MacsTable.build(groups, per_node).predict(groups, keep_counts(groups, ratio))
        what = f"--ratio {ratio:g} (MACs {asked:.3f} of the original)"
    else:
        return []
    if cfg.target_macs is not None and reached < asked - 0.02:
        return [
            f"pruned more than asked: asked for MACs {asked:.3f} of the original, reached {reached:.3f} (the "
            "allocation keeps whole units, and units such as attention heads move the MACs in large steps)"
        ]
    if reached <= asked + 0.01:
        return []
    why = []
    if skipped:
        why.append(f"{len(skipped)} group(s) kept whole (see the unpruned parts)")
    if (cfg.round_to or 1) > 1:
        why.append(f"--round-to {cfg.round_to} rounds channel counts up")
    if cfg.target_macs is not None:
        why.append("the prunable groups cannot give more (units that feed graph outputs, unprunable parts are kept)")
    return [f"budget not met: asked for {what}, reached MACs {reached:.3f} of the original ({'; '.join(why)})"]
