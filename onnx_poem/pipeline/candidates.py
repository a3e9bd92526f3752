"""``--residual auto`` and ``--hidden auto``: candidate runs, each pruned, and the one kept by measurement."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import AUTO_CANDIDATES, SERIALISED_FORMS
from ..coupling import find_groups
from ..graph import GraphView
from ..hidden import NotSliceable, Sliced, measure
from ..srn import serialise
from ..timing import stage
from ..verify import Pruned, sample_errors
from .allocate import allocate
from .analyse import analyse, sized_batches
from .context import Inputs, Progress, PruneResult, RunContext, Tried, build_context, fit_chunks, with_hidden_sliced
from .solving import runnable, solve_cascade, verify_solved
from .summary import build_report, plan_context

logger = logging.getLogger(__name__)


def prune_auto(inputs: Inputs, progress: Progress | None) -> PruneResult:
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
        base = build_context(inputs, Path(tmp))  # split, augmented copies, view: shared by the candidates
        tried = _pruned_candidates(_auto_contexts(inputs, base), progress, "--residual auto")
    result, errors = _kept_candidate(tried)
    result.report.residual_auto = errors
    return result


def _pruned_candidates(
    candidates: Iterable[tuple[str, RunContext]], progress: Progress | None, option: str
) -> dict[str, Tried]:
    """Each candidate context (label → context, in order) analysed, allocated and solved, with its per-sample
    relative output errors on the fitting and selection samples (:func:`choice_errors`)."""
    tried: dict[str, Tried] = {}
    for label, ctx in candidates:
        ctx.workdir.mkdir()
        analysis = analyse(ctx)
        ctx = sized_batches(ctx, analysis)
        allocation = allocate(ctx, analysis, progress)
        solved = solve_cascade(ctx, analysis, allocation, progress)
        errors = choice_errors(ctx, runnable(ctx, analysis, solved.plan))
        logger.info("%s: %s: output error %.4f (fitting and selection samples)", option, label, errors.mean())
        tried[label] = (errors, ctx, analysis, allocation, solved)
    return tried


def _kept_candidate(tried: dict[str, Tried]) -> tuple[PruneResult, dict[str, float]]:
    """The first candidate unless a later one is :func:`clearly_lower` than the one kept so far, verified on the
    verification samples (which the choice never reads), and every candidate's mean error."""
    runs = list(tried.values())
    best = runs[0]
    for t in runs[1:]:
        if clearly_lower(t[0], best[0]):
            best = t
    _, ctx, analysis, allocation, solved = best
    verified = verify_solved(ctx, analysis, solved)
    report = build_report(ctx, analysis, allocation, verified)
    result = PruneResult(verified.model, report, verified.plan, plan_context(ctx))
    return result, {label: float(t[0].mean()) for label, t in tried.items()}


#: --hidden auto: the fractions of the hidden size tried (0 first: slicing needs the evidence)
HIDDEN_CANDIDATES = (0.0, 0.1, 0.2, 0.3, 0.4)


def prune_hidden_auto(inputs: Inputs, progress: Progress | None) -> PruneResult:
    """``--hidden auto``: the model pruned at the same budget with each fraction of :data:`HIDDEN_CANDIDATES` sliced
    first; a fraction replaces the one kept so far only when its relative output error on the fitting and selection
    samples is lower by more than two standard errors of the paired per-sample difference (:func:`clearly_lower`),
    then the kept model is verified on the verification samples, which the choice never reads.  A model whose
    stream cannot be sliced is pruned once, with the reason in the report."""
    with tempfile.TemporaryDirectory(prefix="onnx-poem-") as tmp:
        base = build_context(inputs, Path(tmp))  # the split, augmented copies and view shared by the candidates
        tried = _pruned_candidates(_hidden_contexts(base), progress, "--hidden auto")
    result, errors = _kept_candidate(tried)
    result.report.hidden_auto = errors
    return result


def _hidden_contexts(base: RunContext) -> Iterator[tuple[str, RunContext]]:
    """``base`` with each fraction of :data:`HIDDEN_CANDIDATES` sliced, from one measurement of its stream (each in
    a work folder of its own); ``base`` alone, with the reason, when the stream cannot be sliced."""
    with stage("statistics"):
        measured = measure(base.view, base.data, fit_chunks(base))
    if isinstance(measured, NotSliceable):
        yield "0", replace(base, workdir=base.workdir / "hidden_0", hidden=Sliced(None, reason=measured.reason))
        return
    for fraction in HIDDEN_CANDIDATES:
        ctx = replace(base, workdir=base.workdir / f"hidden_{fraction:g}")
        yield f"{fraction:g}", with_hidden_sliced(ctx, fraction, measured) if fraction else ctx


def clearly_lower(new: np.ndarray, old: np.ndarray, margin: float = 2.0) -> bool:
    """Per-sample errors ``new`` are lower than ``old`` (the same samples, paired) by more than ``margin``
    standard errors of the mean difference: ``--residual auto``'s evidence for leaving the policy kept so far."""
    d = new - old
    return bool(len(d) > 1 and d.mean() + margin * d.std(ddof=1) / np.sqrt(len(d)) < 0)


def _auto_contexts(inputs: Inputs, base: RunContext) -> Iterator[tuple[str, RunContext]]:
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


def _has_streams(inputs: Inputs) -> bool:
    """Residual adds join prunable channels of the model (``--residual stream`` differs from ``internal``)."""
    view = GraphView.build(inputs.model, input_shapes=inputs.data.sample_shapes())
    return any(g.residual for g in find_groups(view, residual=True).groups)


def choice_errors(ctx: RunContext, pruned: Pruned) -> np.ndarray:
    """Per fitting and selection sample (augmented copies included): ``pruned``'s relative squared output error
    against the original (:func:`onnx_poem.verify.sample_errors`)."""
    idx = np.concatenate([ctx.split.fit, ctx.split.select])
    with stage("allocation"):
        return sample_errors(ctx.original, pruned, ctx.data, idx, batch_size=ctx.cfg.batch_size)
