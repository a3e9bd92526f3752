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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import planfile
from .allocation import (
    PRO_MAX_RATIO,
    MacsTable,
    keep_counts,
    pro_keeps,
    ratio_for_macs,
    region_keeps,
    underdetermined_outputs,
)
from .calibration.im2col import input_samples, output_samples, positions_of, sample_positions
from .calibration.sources import CalibrationData, ImageOptions, load_calibration
from .calibration.split import split_samples
from .calibration.stats import LayerStats
from .cascade import Stream, cut_position
from .coupling import ChannelGroup, Consumer, find_groups
from .coupling.groups import positions
from .errors import ModelError, UsageError, VerificationError
from .fold import fold_constants
from .graph import GraphView, check_model, check_structure, declared_shape, load_model
from .plan import ConsumerUpdate, GroupDecision, PrunePlan
from .planfile import PlanContext, model_digest
from .probe import Probe
from .report import APPLIED_SOURCE, LayerReport, PruneReport, count_macs, count_params, node_macs
from .rewrite import apply_plan
from .solvers import (
    METHODS,
    RECONSTRUCTION,
    LayerData,
    QuadProblem,
    Samples,
    greedy_eliminate,
    kept_columns,
    reconstruct,
    relative_errors,
    select_channels,
)
from .solvers.activations import apply as act_apply
from .solvers.activations import derivative as act_derivative
from .timing import Clock, bind, stage
from .verify import Agreement, session, verify
from .weights import effective, stored_arrays

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

#: how the pruning budget is spread over the groups (``uniform``: one ratio; ``pro``: by error per MAC)
ALLOCATIONS = ("uniform", "pro")


@dataclass(frozen=True)
class PruneConfig:
    """Options of :func:`prune` (see the CLI help for their meaning)."""

    ratio: float | None = None
    target_macs: float | None = None
    method: str = "poem"
    mode: str = "cascade"
    samples: int = 512
    seed: int = 0
    positions: int = 64
    reservoir: int = 16384
    batch_size: int = 32
    damping: float = 0.01
    prune_residual: bool = False
    allocation: str = "pro"
    round_to: int = 1
    synthetic: bool = False
    dry_run: bool = False

    def validate(self) -> None:
        if (self.ratio is None) == (self.target_macs is None):
            raise UsageError("give exactly one of ratio and target_macs")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise UsageError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.target_macs is not None and not 0.0 < self.target_macs <= 1.0:
            raise UsageError(f"target_macs must be in (0, 1], got {self.target_macs}")
        if self.method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.mode not in ("cascade", "parallel"):
            raise UsageError(f"mode must be cascade or parallel, got {self.mode!r}")
        for name in ("samples", "positions", "reservoir", "batch_size", "round_to"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")
        if not self.damping > 0:
            raise UsageError(f"damping must be > 0, got {self.damping}")


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
    cfg = PruneConfig(ratio=ratio, target_macs=target_macs, method=method, **options)
    cfg.validate()
    t0 = time.perf_counter()
    with bind(Clock()) as clock, stage("other"):
        result = _prune(model, cfg, calib, image_options, verify_data, progress)
    result.report.timings.update({k: round(v, 3) for k, v in clock.seconds.items()})
    result.report.timings["total"] = time.perf_counter() - t0
    return result


def apply_saved_plan(
    model: onnx.ModelProto | str | Path,
    plan_file: str | Path,
    *,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None = None,
    image_options: ImageOptions | None = None,
    samples: int = 512,
    batch_size: int = 32,
) -> tuple[onnx.ModelProto, PruneReport]:
    """Apply a plan saved by a run (``--save-plan``) to the same model, without calibration.

    The result is byte-identical to the model that run wrote.  With ``calib`` the
    agreement with the original is measured on (up to ``samples`` of) it; without,
    the pruned model is only checked and run once on zeros.

    Raises:
        UsageError: the plan is unreadable, or was computed for another model or analysis.
    """
    t0 = time.perf_counter()
    plan, ctx = planfile.read(Path(plan_file))
    with bind(Clock()) as clock, stage("other"):
        with stage("load"):
            model, name = _load(model)
            model = fold_constants(model)
            if _digest(model) != ctx.model_sha256:
                raise UsageError(f"{plan_file} was computed for another model ({ctx.model_name}), not {name}")
            view = GraphView.build(model, input_shapes=ctx.input_shapes)
            groups = {g.id: g for g in find_groups(view, residual=ctx.prune_residual).groups}
        for d in plan.decisions:
            if d.group_id not in groups or groups[d.group_id].channels != d.channels:
                raise UsageError(f"{plan_file}: group {d.group_id} ({d.channels} channels) is not in this model")
        with stage("rewrite"):
            pruned = _infer(apply_plan(view, groups, plan) if plan.decisions else _copy(model))
        zeros = {n: np.zeros(tuple(ctx.input_shapes[n]), dtype=view.dtypes.get(n, np.float32)) for n in view.inputs}
        data = load_calibration(
            model, zeros if calib is None else calib, samples=samples, seed=0, image_options=image_options
        )
        with stage("verification"):
            agreement = verify(
                model,
                pruned,
                data,
                np.arange(len(data)) if calib is not None else [],
                batch_size=batch_size,
                source=APPLIED_SOURCE,
            )
    settings = ctx.settings
    report = PruneReport(
        model=name,
        method=str(settings.get("method", "?")),
        ratio=float(settings.get("ratio") or 0.0),
        mode=str(settings.get("mode", "?")),
        seed=int(settings.get("seed", 0)),
        calibration_samples=0,
        selection_samples=0,
        verification_samples=len(data) if calib is not None else 0,
        synthetic_calibration=False,
        target_macs=settings.get("target_macs"),
        allocation=f"{settings.get('allocation', '?')} (applied from {Path(plan_file).name})",
    )
    kept = {d.group_id: len(d.keep) for d in plan.decisions}
    report.groups = _group_rows(view, list(groups.values()), {g: kept.get(g, c.channels) for g, c in groups.items()})
    report.set_agreement(agreement)
    one = {n: v[:1] for n, v in data.feed([0]).items()}
    report.macs_before, report.params_before = count_macs(model, one), count_params(model)
    report.macs_after, report.params_after = count_macs(pruned, one), count_params(pruned)
    report.timings.update({k: round(v, 3) for k, v in clock.seconds.items()})
    report.timings["total"] = time.perf_counter() - t0
    return pruned, report


def _prune(
    model: onnx.ModelProto | str | Path,
    cfg: PruneConfig,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    image_options: ImageOptions | None,
    verify_data: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    progress: Progress | None,
) -> PruneResult:
    with stage("load"):
        model, name, data, checks, cfg = _inputs(model, cfg, calib, image_options, verify_data)
        split = split_samples(len(data), seed=cfg.seed, verify=checks is None)
    fit_idx, held_idx = split.fit, split.select
    shapes = data.sample_shapes()
    context = PlanContext(
        model_name=name,
        model_sha256=_digest(model),
        input_shapes={k: [int(x) for x in v] for k, v in shapes.items()},
        prune_residual=cfg.prune_residual,
        settings=_settings(cfg),
    )
    view = GraphView.build(model, input_shapes=shapes)
    coupling = find_groups(view, residual=cfg.prune_residual)
    report = PruneReport(
        model=name,
        method=cfg.method,
        ratio=cfg.ratio or 0.0,
        mode=cfg.mode,
        seed=cfg.seed,
        calibration_samples=len(fit_idx),
        selection_samples=len(held_idx),
        verification_samples=len(checks) if checks is not None else len(split.verify),
        synthetic_calibration=data.synthetic,
    )
    report.unprunable = [{"where": u.where, "reason": u.reason} for u in coupling.unprunable]
    one = data.feed([0])
    per_node = node_macs(model, one)
    report.macs_before, report.params_before = sum(per_node.values()), count_params(model)
    if not coupling.groups:
        report.warnings.append("no prunable layer found")
    skipped = underdetermined_outputs(view, coupling.groups, len(fit_idx), cfg.positions)
    report.unprunable += [{"where": gid, "reason": why} for gid, why in skipped.items()]
    free = [g for g in coupling.groups if g.id not in skipped]
    table = MacsTable.build(free, per_node)
    ratio = cfg.ratio
    if ratio is None:
        target = float(cfg.target_macs or 1.0)
        ratio = ratio_for_macs(free, table, target, cfg.round_to) if free and target < 1.0 else 0.0
        report.ratio, report.target_macs = ratio, cfg.target_macs
    report.allocation = cfg.allocation
    chunks = [idx[i : i + cfg.batch_size] for idx in (fit_idx, held_idx) for i in range(0, len(idx), cfg.batch_size)]
    groups = {g.id: g for g in coupling.groups}
    ratios = {g.id: ratio for g in free}
    failed: dict[str, str] = {}  # group id → why it was left unpruned after it failed
    with tempfile.TemporaryDirectory(prefix="onnx-poem-") as tmp:
        if cfg.allocation == "pro" and free and ratio > 0:
            target = cfg.target_macs if cfg.target_macs is not None else table.predict(free, keep_counts(free, ratio))
            t1 = time.perf_counter()
            probe = held_idx[:PROBE_SAMPLES] if len(held_idx) else fit_idx[:PROBE_SAMPLES]
            with stage("allocation"):
                curves = _error_curves(
                    view, free, groups, data, chunks, len(fit_idx), ratio, cfg, Path(tmp), probe, progress, failed
                )
            kept_by_pro = pro_keeps(free, curves, table, target, step=cfg.round_to)
            ratios = {g.id: 1.0 - kept_by_pro[g.id] / g.channels for g in free}
            report.timings["pro_total"] = time.perf_counter() - t1
        quotas = {g.id: region_keeps(g, ratios[g.id], cfg.round_to) for g in free}
        keeps = {gid: int(q.sum()) for gid, q in quotas.items()}
        keeps |= {g.id: g.channels for g in coupling.groups if g.id in skipped}
        if cfg.dry_run:
            report.groups = _group_rows(view, coupling.groups, keeps)
            report.macs_after = round(report.macs_before * table.predict(free, {g.id: keeps[g.id] for g in free}))
            report.warnings.append("dry run: nothing was solved or written; MACs after are predicted")
            return PruneResult(None, report, PrunePlan(), context)
        plan = PrunePlan()
        # block-internal groups first: a residual group's consumers then see their final inputs,
        # and no group reads a tensor whose channels an earlier decision already removed
        todo = [g for g in coupling.groups if keeps[g.id] < g.channels and not g.residual]
        todo += [g for g in coupling.groups if keeps[g.id] < g.channels and g.residual]
        streams = (Stream(view, data, chunks, Path(tmp), "orig"), Stream(view, data, chunks, Path(tmp), "cur"))
        probe_feed = data.feed(fit_idx[:1])
        applied = model  # the model with ``plan`` applied (checked), reused as the cascade's current model
        for done, g in enumerate(todo):
            if progress:
                progress(done, len(todo), g.id)
            nxt = cut_position(view, todo[done + 1]) if done + 1 < len(todo) else None
            for attempt in (0, 1):
                current = applied if cfg.mode == "cascade" else model
                try:
                    decision, layers = _solve_group(
                        view, current, g, quotas[g.id], streams, nxt, len(fit_idx), cfg, len(plan.decisions)
                    )
                    trial = plan.extended(decision)
                    with stage("rewrite"):
                        candidate = apply_plan(view, groups, trial)
                        check_structure(candidate, what="the rewrite", error=VerificationError)
                except Exception as e:
                    if attempt == 0 and current is not model and _fails(view, groups, plan, probe_feed):
                        plan = _drop_failing(view, groups, plan, probe_feed, failed)  # an earlier group's rewrite
                        applied = apply_plan(view, groups, plan) if plan.decisions else model
                        streams[1].reset()
                        continue
                    failed[g.id] = _reason(e)
                    logger.warning("group %s left unpruned: %s", g.id, failed[g.id])
                    break
                plan, applied = trial, candidate
                report.layers.extend(layers)
                break
    if progress:
        progress(len(todo), len(todo), "")
    pruned = _infer(applied if plan.decisions else _copy(model))
    try:
        agreement = _verify(model, pruned, data, checks, split.verify, cfg)
    except VerificationError:
        if not plan.decisions:
            raise
        plan = _drop_failing(view, groups, plan, probe_feed, failed)
        pruned = _infer(apply_plan(view, groups, plan) if plan.decisions else _copy(model))
        agreement = _verify(model, pruned, data, checks, split.verify, cfg)
    for gid, why in failed.items():
        keeps[gid] = groups[gid].channels
        report.unprunable.append({"where": gid, "reason": f"left unpruned: {why}"})
    report.layers = [la for la in report.layers if la.group not in failed]
    report.groups = _group_rows(view, coupling.groups, keeps)
    report.set_agreement(agreement)
    report.macs_after, report.params_after = count_macs(pruned, one), count_params(pruned)  # after the checks
    report.warnings += _budget_warnings(coupling.groups, per_node, ratio, cfg, report.macs_ratio, skipped)
    return PruneResult(pruned, report, plan, context)


def _group_rows(view: GraphView, groups: Sequence[ChannelGroup], keeps: Mapping[str, int]) -> list[dict[str, Any]]:
    """The report's table of groups: size, kept count, members."""
    return [
        {
            "group": g.id,
            "channels": g.channels,
            "kept": keeps[g.id],
            "residual": g.residual,
            "producers": [view.node_label(p) for p in g.producers],
            "consumers": [c.label for c in g.consumers],
            "tensors": len(g.tensors),
        }
        for g in groups
    ]


def _digest(model: onnx.ModelProto) -> str:
    """SHA-256 of ``model``'s deterministic serialisation (what a saved plan was computed for)."""
    return model_digest(model.SerializeToString(deterministic=True))


def _settings(cfg: PruneConfig) -> dict[str, Any]:
    """The run's settings as plain data (recorded in a saved plan)."""
    return {k: v for k, v in asdict(cfg).items() if k != "dry_run"}


def _inputs(
    model: onnx.ModelProto | str | Path,
    cfg: PruneConfig,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    image_options: ImageOptions | None,
    verify_data: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
) -> tuple[onnx.ModelProto, str, CalibrationData, CalibrationData | None, PruneConfig]:
    """The checked, constant-folded model, its name, the calibration data, the ``--verify-data`` set and the
    config with the batch size clamped to a fixed batch dimension of the model."""
    model, name = _load(model)
    model = fold_constants(model)
    data = load_calibration(
        model, calib, samples=cfg.samples, seed=cfg.seed, image_options=image_options, synthetic=cfg.synthetic
    )
    checks = None
    if verify_data is not None:
        checks = load_calibration(
            model, verify_data, samples=VERIFY_DATA_MAX, seed=cfg.seed, image_options=image_options
        )
    fixed = [d[0] for d in (declared_shape(model, n) for n in data.arrays) if d and isinstance(d[0], int) and d[0] > 0]
    if fixed and min(fixed) < cfg.batch_size:  # a model exported for a fixed batch (often 1)
        cfg = replace(cfg, batch_size=min(fixed))
    return model, name, data, checks, cfg


def _verify(
    model: onnx.ModelProto,
    pruned: onnx.ModelProto,
    data: CalibrationData,
    checks: CalibrationData | None,
    indices: np.ndarray,
    cfg: PruneConfig,
) -> Agreement:
    """Agreement on ``--verify-data`` when given, else on the verification split ``indices`` of ``data``."""
    with stage("verification"):
        return _agreement(model, pruned, data, checks, indices, cfg)


def _agreement(
    model: onnx.ModelProto,
    pruned: onnx.ModelProto,
    data: CalibrationData,
    checks: CalibrationData | None,
    indices: np.ndarray,
    cfg: PruneConfig,
) -> Agreement:
    if checks is not None:
        return verify(model, pruned, checks, np.arange(len(checks)), batch_size=cfg.batch_size, source="--verify-data")
    return verify(model, pruned, data, indices, batch_size=cfg.batch_size, source="verification split")


def _reason(e: BaseException) -> str:
    """One line naming what failed (the group is left unpruned with it)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:300]


def _fails(view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan, feed: dict[str, np.ndarray]) -> str:
    """Why the model with ``plan`` applied fails the checker or an onnxruntime run on ``feed`` ("" if it does not)."""
    try:
        m = apply_plan(view, groups, plan)
        check_model(m, what="the rewrite", error=VerificationError)
        session(m).run(None, feed)
    except Exception as e:
        return _reason(e)
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


#: PRO's probes of the final-output error use at most this many selection samples
PROBE_SAMPLES = 64
#: --verify-data: at most this many samples are read
VERIFY_DATA_MAX = 100_000


def _load(model: onnx.ModelProto | str | Path) -> tuple[onnx.ModelProto, str]:
    """The model (checked) and a name for the report."""
    if isinstance(model, onnx.ModelProto):
        check_model(model, what="input model", error=ModelError)
        return model, model.graph.name or "model"
    return load_model(model), Path(model).name


def _budget_warnings(
    groups: Sequence[ChannelGroup],
    per_node: Mapping[int, int],
    ratio: float,
    cfg: PruneConfig,
    reached: float,
    skipped: Mapping[str, str],
) -> list[str]:
    """Warnings when the reached MACs fraction is more than one point above what was asked for.

    Asked for: ``--target-macs``, or with ``--ratio`` the MACs that removing that fraction of every
    prunable group (the under-determined ones included, unrounded) would leave.
    """
    if cfg.target_macs is not None:
        asked, what = cfg.target_macs, f"--target-macs {cfg.target_macs:g}"
    elif groups and ratio > 0:
        asked = MacsTable.build(groups, per_node).predict(groups, keep_counts(groups, ratio))
        what = f"--ratio {ratio:g} (MACs {asked:.3f} of the original)"
    else:
        return []
    if reached <= asked + 0.01:
        return []
    why = []
    if skipped:
        why.append(f"{len(skipped)} group(s) kept whole (see the unpruned parts)")
    if cfg.round_to > 1:
        why.append(f"--round-to {cfg.round_to} rounds channel counts up")
    if cfg.target_macs is not None:
        why.append("the prunable groups cannot give more (units that feed graph outputs, unprunable parts are kept)")
    return [f"budget not met: asked for {what}, reached MACs {reached:.3f} of the original ({'; '.join(why)})"]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # the checker in verify() reports real problems
        logger.warning("shape inference of the pruned model failed: %s", e)
        return model


def _error_curves(
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
    :data:`PRO_MAX_RATIO` of every region), summed over the consumers, each
    relative to the variance of its original output ``V = tr(W0 Σ_x W0ᵀ)·N``
    (POEM: on the activation-weighted Gram).  Local errors of different layers
    are not worth the same at the model's output, so each curve is rescaled
    [R]: the group alone is pruned (least-squares refit) and the model's outputs
    on ``probe_idx`` (selection samples, not fitting ones) give the final relative error
    ``ε_g(j) = Σ‖o' − o‖² / Σ‖o − ō‖²`` at ``j0 = round(ratio·C)``, ``2·j0`` and
    the curve's end; the curve is multiplied by ``ε_g(j) / e_g(j)``, interpolated
    linearly in ``j`` between those points (no extrapolation).  The probes run
    as :class:`onnx_poem.probe.Probe` describes.
    """
    probe_cfg = replace(cfg, mode="parallel")
    work = tmp / "pro"
    work.mkdir()
    streams = (Stream(view, data, chunks, work, "orig"), Stream(view, data, chunks, work, "cur"))
    order = sorted(groups, key=lambda g: cut_position(view, g))
    probe = Probe(view, every, data, probe_idx, cfg.batch_size, work)
    curves: dict[str, np.ndarray] = {}
    for i, g in enumerate(order):
        if progress:
            progress(i, len(order), f"sensitivity {g.id}")
        nxt = cut_position(view, order[i + 1]) if i + 1 < len(order) else None
        try:
            curves[g.id] = _error_curve(view, g, streams, nxt, n_fit, probe_cfg, i, ratio, probe)
        except Exception as e:
            failed[g.id] = f"error curve: {_reason(e)}"
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
    """PRO's curve of one group (see :func:`_error_curves`)."""
    W0s = [effective(view, c)[0] for c in g.consumers]
    with stage("statistics"):
        stats = _collect(view, view.model, g, W0s, streams, nxt, n_fit, cfg, i)
    layers = [_layer_data(c, W0, st) for c, W0, st in zip(g.consumers, W0s, stats, strict=True)]
    problems, scales = [], []
    for d in layers:
        G, P = d.Gw, d.Pw  # activation-weighted for POEM; LayerStats.finish makes them G, P otherwise
        problems.append(QuadProblem(G, P, d.W0, d.k, d.index))
        n, count = G.shape[0] - 1, max(G[-1, -1], 1e-12)
        mean = G[:n, -1] / count
        M = d.W0[:, :n]
        V = float(np.einsum("ij,jk,ik->", M, G[:n, :n], M) - count * np.sum((M @ mean) ** 2))
        scales.append(1.0 / max(V, 1e-12 * float(np.sum(M * M)) + 1e-30))
    quota = region_keeps(g, PRO_MAX_RATIO)
    trace: list[float] = []
    removed: list[int] = []
    greedy_eliminate(
        problems,
        g.channels,
        int(quota.sum()),
        lam=cfg.damping,
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
    variants = [_refit_alone(view, g, layers, removed[:j], cfg) for j in points]
    errors = probe.errors(g, variants)
    scale = [e / probe.spread / max(float(curve[j - 1]), 1e-30) for e, j in zip(errors, points, strict=True)]
    return curve * np.interp(np.arange(1, len(curve) + 1), points, scale)


def _refit_alone(
    view: GraphView, g: ChannelGroup, layers: list[LayerData], removed: list[int], cfg: PruneConfig
) -> list[ConsumerUpdate]:
    """Full-width updates of ``g``'s consumers with atoms ``removed`` read with zero weights and the others
    refit by least squares: the outputs of ``g`` alone pruned (:mod:`onnx_poem.probe`)."""
    kept = np.setdiff1d(np.arange(g.channels), removed)
    updates = []
    for c, d in zip(g.consumers, layers, strict=True):
        own = positions(c.index, kept)
        every = positions(c.index, np.arange(g.channels))
        W = np.zeros((d.W0.shape[0], len(every) * d.k + 1))
        W[:, kept_columns(own, d.k, W.shape[1])] = reconstruct(d, own, method="ls", lam=cfg.damping).W
        updates.append(_consumer_update(view, g, c, W, every))
    return updates


def _solve_group(
    view: GraphView,
    current: onnx.ModelProto,
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
        stats = _collect(view, current, g, W0s, streams, next_cut, n_fit, cfg, index)
    layers = [_layer_data(c, W0, st) for c, W0, st in zip(g.consumers, W0s, stats, strict=True)]
    with stage("selection"):
        kept = _select(view, g, layers, quota, cfg, index)
    with stage("reconstruction"):
        updates, reports = _reconstruct_group(view, g, layers, stats, kept, cfg, t0)
    return GroupDecision(g.id, g.channels, tuple(int(i) for i in kept), tuple(updates)), reports


def _select(
    view: GraphView, g: ChannelGroup, layers: list[LayerData], quota: np.ndarray, cfg: PruneConfig, index: int
) -> np.ndarray:
    """Sorted kept atoms of ``g`` (``quota``: atoms to keep per region) by ``cfg.method``."""
    return select_channels(
        cfg.method,
        layers,
        g.channels,
        int(quota.sum()),
        filters=_filters(view, g),
        seed=cfg.seed + index,
        lam=cfg.damping,
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
    t0: float,
) -> tuple[list[ConsumerUpdate], list[LayerReport]]:
    """New weights of every consumer of ``g`` on the ``kept`` atoms, and their layer reports."""
    updates, reports = [], []
    for c, d, st in zip(g.consumers, layers, stats, strict=True):
        own = positions(c.index, kept)  # kept channels of this consumer
        rec = reconstruct(d, own, method=RECONSTRUCTION[cfg.method], lam=cfg.damping)
        cols = kept_columns(own, d.k, d.G.shape[0])
        errs = {}
        for tag, W in (
            ("none", d.W0[:, cols]),
            ("ls", rec.W_ls if rec.W_ls is not None else reconstruct(d, own, method="ls", lam=cfg.damping).W),
            ("chosen", rec.W),
        ):
            errs[f"pre_{tag}"], errs[f"post_{tag}"] = relative_errors(d, W, cols, d.held)
        updates.append(_consumer_update(view, g, c, rec.W, own))
        n_params = d.W0.shape[1]
        reports.append(
            LayerReport(
                group=g.id,
                consumer=c.label,
                channels=g.channels,
                kept=len(kept),
                activation=d.activation,
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


def _consumer_update(view: GraphView, g: ChannelGroup, c: Consumer, W: np.ndarray, own: np.ndarray) -> ConsumerUpdate:
    """The stored weight and bias of consumer ``c`` for effective weights ``W`` on its kept channels ``own``."""
    w, b = stored_arrays(view, c, W, own, c.in_channels or g.channels)
    return ConsumerUpdate(c.node, c.weight, w, c.bias, b)


def _filters(view: GraphView, g: ChannelGroup) -> np.ndarray:
    """``(atoms, F)`` weights of every producer of ``g``, side by side (zeros where an atom is absent)."""
    blocks = []
    for prod in g.producers or (g.producer,):
        p = next(p for p in g.params if p.name == view.nodes[prod].input[1])
        w = np.moveaxis(np.asarray(view.const(p.name), dtype=np.float64), p.axis, 0)
        w = w.reshape(w.shape[0], -1)
        idx = np.arange(g.channels) if p.index is None else np.asarray(p.index)
        block = np.zeros((g.channels, w.shape[1]))
        block[idx >= 0] = w[idx[idx >= 0]]
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def _layer_data(c: Consumer, W0: np.ndarray, st: LayerStats) -> LayerData:
    """Solver view of consumer ``c`` with effective weights ``W0: (m, n+1)`` and its statistics."""
    channels = c.in_channels or 1

    def samples(r: Any) -> Samples:
        m = W0.shape[0]
        empty = np.zeros((0, m), dtype=np.float32)
        return Samples(
            X=r.get("x") if len(r) else np.zeros((0, W0.shape[1] - 1), dtype=np.float32),
            Y=r.get("y") if len(r) else empty,
            S=r.get("s") if len(r) else empty,
            Z=r.get("z") if len(r) else empty,
        )

    return LayerData(
        G=st.G,
        P=st.P,
        Gw=st.Gw,
        Pw=st.Pw,
        W0=W0,
        k=(W0.shape[1] - 1) // channels,
        count=st.count,
        activation=c.activation.kind,
        act_params=c.activation.params,
        fit=samples(st.fit),
        held=samples(st.held),
        index=None if c.index is None else np.asarray(c.index, dtype=np.int64),
    )


def _collect(
    view: GraphView,
    current: onnx.ModelProto,
    g: ChannelGroup,
    W0s: list[np.ndarray],
    streams: tuple[Stream, Stream],
    next_cut: int | None,
    n_fit: int,
    cfg: PruneConfig,
    index: int,
) -> list[LayerStats]:
    """Stream the calibration batches (the first ``n_fit`` samples fit, the rest held out) for group ``g``.

    Targets come from the original model (``streams[0]``), consumer inputs from
    ``current`` (``streams[1]``); both run segment-wise from their cached frontier.
    The original model never changes, so its stream may move on to ``next_cut``
    (the next group's cut) when only it is needed.
    """
    orig_names = [*view.inputs, *(t for c in g.consumers for t in (c.output, c.offset) if t)]
    cur_names = [t for c in g.consumers for t in (c.input, c.offset) if t]
    same = current is view.model
    if same:
        orig_names = list(dict.fromkeys(orig_names + cur_names))
    cut = cut_position(view, g)
    orig_stream, cur_stream = streams
    cur_runs = None if same else cur_stream.run(current, cur_names, cut)
    orig_cut = next_cut if (next_cut is not None and not (same and cfg.mode == "cascade")) else cut
    weighted = cfg.method == "poem"
    stats: list[LayerStats] = []
    for j, W0 in enumerate(W0s):
        seed = int(np.random.SeedSequence([cfg.seed, index, j, 1]).generate_state(1)[0])
        stats.append(
            LayerStats.empty(
                W0.shape[1], W0.shape[0], capacity=cfg.reservoir, held_capacity=max(cfg.reservoir // 2, 1), seed=seed
            )
        )
    rngs = [np.random.default_rng([cfg.seed, index, j]) for j in range(len(g.consumers))]
    seen = 0
    for orig in orig_stream.run(view.model, orig_names, cut, orig_cut):
        cur = next(cur_runs) if cur_runs else orig
        held = seen >= n_fit
        seen += len(next(iter(orig.values())))
        mask = _token_mask({n: orig[n] for n in view.inputs})
        for c, st, rng in zip(g.consumers, stats, rngs, strict=True):
            _add_batch(c, st, rng, cur[c.input], orig, cur, mask, held=held, weighted=weighted, cfg=cfg)
    if cur_runs:
        for _ in cur_runs:  # not reached: both streams visit the same batches; this commits the frontier
            pass
    elif cfg.mode == "cascade":
        cur_stream.adopt(orig_stream)
    for st in stats:
        st.finish(weighted)
    return stats


def _token_mask(feed: dict[str, np.ndarray]) -> np.ndarray | None:
    """``(B, T)`` valid-token flags from an integer ``*mask*`` input (padding is not calibration data)."""
    for name, v in feed.items():
        if "mask" in name.lower() and v.ndim == 2 and v.dtype.kind in "iub":
            return v != 0
    return None


def _add_batch(
    c: Consumer,
    st: LayerStats,
    rng: np.random.Generator,
    x_hat: np.ndarray,
    orig: dict[str, np.ndarray],
    cur: dict[str, np.ndarray],
    mask: np.ndarray | None,
    *,
    held: bool,
    weighted: bool,
    cfg: PruneConfig,
) -> None:
    y_full = orig[c.output]
    total = positions_of(c, x_hat.shape)
    tokens = mask is not None and c.kind not in ("conv", "convt") and x_hat.ndim == 3 and mask.shape == x_hat.shape[:2]
    pos, ok = sample_positions(total, cfg.positions, x_hat.shape[0], rng, mask if tokens else None)
    keep = ok.reshape(-1)
    x = input_samples(c, x_hat, pos)[keep].astype(np.float32)  # the statistics take float32 rows
    y = output_samples(c, y_full, pos).astype(np.float64)[keep]
    s_orig = s_hat = np.zeros_like(y)
    if c.offset:
        s_orig = output_samples(c, np.broadcast_to(orig[c.offset], y_full.shape), pos).astype(np.float64)[keep]
        s_hat = s_orig
        if cur[c.offset].shape == orig[c.offset].shape:  # else pruned already: use the original shortcut
            s_hat = output_samples(c, np.broadcast_to(cur[c.offset], y_full.shape), pos).astype(np.float64)[keep]
    a = y + s_orig
    kind, params = c.activation.kind, c.activation.params
    z = act_apply(kind, params, a)
    if held:
        st.held.add(x=x, y=y, s=s_hat, z=z)
        return
    w = np.mean(act_derivative(kind, params, a) ** 2, axis=1) if weighted else None
    st.add_fit(x, y, w, {"s": s_hat, "z": z})
