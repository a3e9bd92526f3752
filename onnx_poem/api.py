"""Orchestration: load → couple → calibrate → allocate → solve → rewrite → verify → report.

:func:`run` calls the stages of :mod:`onnx_poem.pipeline` in that order (``load_inputs`` and ``build_context``
in ``context``, then ``analyse`` with ``sized_batches``, ``allocate``, ``solve_cascade`` and ``verify_solved``
in ``solving``, ``build_report`` in ``summary``); ``--residual auto`` and ``--hidden auto`` run them once per candidate
(``candidates``).

Cascade mode (default): groups are solved in topological order of their
producers; the inputs ``x̂`` of a group's consumers come from the model with
all earlier decisions applied, the targets from the original model.
Parallel mode: every group sees the original model's inputs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .arena import arena_scope
from .calibration.sources import ImageOptions
from .config import ALLOCATIONS, PruneConfig
from .device import use_device
from .errors import UsageError
from .pipeline.allocate import allocate, measure_curves
from .pipeline.analyse import analyse, sized_batches
from .pipeline.candidates import prune_auto, prune_hidden_auto
from .pipeline.context import Inputs, Progress, PruneResult, build_context, load_inputs
from .pipeline.solving import solve_cascade, verify_solved
from .pipeline.summary import build_report, plan_context
from .plan import PrunePlan
from .replay import apply_saved_plan
from .report import PruneReport
from .threads import limit_threads
from .timing import Clock, bind, stage

__all__ = ["ALLOCATIONS", "PruneConfig", "PruneResult", "apply_saved_plan", "prune", "run", "run_family"]


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
    with limit_threads(cfg.threads), use_device(cfg.device), arena_scope(), bind(Clock()) as clock, stage("other"):
        with stage("load"):
            inputs = load_inputs(model, cfg, calib, image_options, verify_data)
        result = _prune(inputs, progress)
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
    with (
        limit_threads(cfgs[0].threads),
        use_device(cfgs[0].device),
        arena_scope(),
        bind(Clock()) as shared_clock,
        stage("other"),
    ):
        inputs = load_inputs(model, cfgs[0], calib, image_options, verify_data)
        with tempfile.TemporaryDirectory(prefix="onnx-poem-") as tmp:
            base = build_context(inputs, Path(tmp))
            top = max(range(len(cfgs)), key=lambda i: cfgs[i].ratio or 0.0)
            ctx_top = replace(base, cfg=replace(base.cfg, ratio=cfgs[top].ratio))
            analysis_top = analyse(ctx_top)
            base = sized_batches(base, analysis_top)  # the groups, and so the batches, do not depend on the ratio
            ctx_top = replace(base, cfg=replace(base.cfg, ratio=cfgs[top].ratio))
            curves = None
            if ctx_top.cfg.allocation == "pro" and analysis_top.free and analysis_top.ratio > 0:
                curves = measure_curves(ctx_top, analysis_top, progress)
            shared_seconds = shared_clock.timings(t0)
            for i, cfg in enumerate(cfgs):
                t1 = time.perf_counter()
                with bind(Clock()) as clock, stage("other"):
                    workdir = base.workdir / f"family_{i}"  # each solve's cached frontiers in a folder of its own
                    workdir.mkdir()
                    ctx = replace(base, cfg=replace(base.cfg, ratio=cfg.ratio), workdir=workdir)
                    analysis = analysis_top if cfg is cfgs[top] else analyse(ctx)
                    allocation = allocate(ctx, analysis, progress, curves)
                    solved = solve_cascade(ctx, analysis, allocation, progress)
                    verified = verify_solved(ctx, analysis, solved)
                    report = build_report(ctx, analysis, allocation, verified)
                report.timings.update(clock.timings(t1))
                results.append(PruneResult(verified.model, report, verified.plan, plan_context(ctx)))
    results[0].report.timings["family_shared"] = shared_seconds["total"]
    return results


def _prune(inputs: Inputs, progress: Progress | None) -> PruneResult:
    """The stages of a run after loading, in order; each returns a typed result, the report is built once at
    the end."""
    cfg = inputs.cfg
    if cfg.residual == "auto":
        return prune_auto(inputs, progress)
    if cfg.hidden_auto:
        return prune_hidden_auto(inputs, progress)
    with tempfile.TemporaryDirectory(prefix="onnx-poem-") as tmp:
        ctx = build_context(inputs, Path(tmp))
        analysis = analyse(ctx)
        ctx = sized_batches(ctx, analysis)
        allocation = allocate(ctx, analysis, progress)
        if ctx.cfg.dry_run:
            return PruneResult(None, build_report(ctx, analysis, allocation, None), PrunePlan(), plan_context(ctx))
        solved = solve_cascade(ctx, analysis, allocation, progress)
    verified = verify_solved(ctx, analysis, solved)
    return PruneResult(
        verified.model, build_report(ctx, analysis, allocation, verified), verified.plan, plan_context(ctx)
    )
