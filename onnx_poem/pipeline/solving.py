"""The ``solve`` stage (the cascade over the groups, with each rewrite checked) and the ``verify`` stage; a decision
whose rewrite breaks the model is dropped and its group left unpruned with the reason."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx

from ..allocation import region_sizes
from ..cascade import Current, Stream, cut_position
from ..config import PruneConfig
from ..coupling import ChannelGroup
from ..coupling.refit import refit_groups
from ..errors import VerificationError, one_line
from ..graph import GraphView, check_model, check_structure, release_segments
from ..modelio import infer_or_keep
from ..plan import PrunePlan, Spill, StoredWeights
from ..rewrite import apply_plan, apply_plan_stubbed, rewritten, session_arrays
from ..solve import solve_group
from ..timing import stage
from ..verify import Agreement, Pruned, session, verify
from .context import Allocation, Analysis, Progress, RunContext, Solved

logger = logging.getLogger(__name__)


def refit_config(cfg: PruneConfig) -> PruneConfig:
    """How a stream reader is refitted (:mod:`onnx_poem.coupling.refit`): by least squares, whatever the method.

    [R, speed] POEM's post-activation fit of an inverted residual's expansion conv (six times the stream's width in
    outputs) took EfficientNet-Lite0's and MobileNetV3-Large's prune time from 8.8 / 7.7 s to 21.8 / 18.7 s
    (uniform, 128 samples; least squares 13.2 / 11.4 s), and least squares measured better (EfficientNet-Lite0 at 0.70
    of the MACs 80.80 against 80.37 over six seeds; benchmarks/refit.md)."""
    return replace(cfg, method="reap")


def solve_cascade(ctx: RunContext, a: Analysis, alloc: Allocation, progress: Progress | None) -> Solved:
    """The cascade: solve each group on the model with every earlier decision applied, rewrite, check.

    A group whose solve or rewrite fails is left unpruned with the error as its reason; if an
    earlier group's rewrite turns out to be the cause, the failing decisions are dropped first.
    """
    cfg, view, groups = ctx.cfg, ctx.view, a.groups
    # block-internal groups first: a residual group's consumers then see their final inputs,
    # and no group reads a tensor whose channels an earlier decision already removed
    todo = [g for g in a.coupling.groups if alloc.keeps[g.id] < g.channels and not g.residual]
    todo += [g for g in a.coupling.groups if alloc.keeps[g.id] < g.channels and g.residual]
    # the layers reading a residual stream refitted just before their group (coupling.refit)
    todo = [r for g in todo for r in (*a.refits.get(g.id, ()), g)]
    refit_ids = set(refit_groups(a.refits))  # those keep every atom and are fitted by least squares
    streams = (
        Stream(view, ctx.data, ctx.chunks, ctx.workdir, "orig"),
        Stream(view, ctx.data, ctx.chunks, ctx.workdir, "cur"),
    )
    probe_feed = ctx.data.feed(ctx.split.fit[:1])
    failed = dict(alloc.failed)  # group id → why it was left unpruned after it failed
    plan, layers = PrunePlan(), []
    spill = Spill()  # the decisions' large arrays go to files (see onnx_poem.plan)
    weights = StoredWeights(Spill())  # the current model's rewritten weights, in files of their own
    # the cascade's current model: ``plan`` applied (checked; large weights stubbed, see apply_plan_stubbed),
    # None until built for the next group
    applied: Current | None = Current.original(view)
    current: Current | None = None
    for done, g in enumerate(todo):
        if progress:
            progress(done, len(todo), g.id)
        nxt = cut_position(view, todo[done + 1]) if done + 1 < len(todo) else None
        for attempt in (0, 1):
            if applied is None:  # dropped before a rewrite that failed
                applied = _current(view, groups, plan, weights, None)
            current = applied if cfg.mode == "cascade" else Current.original(view)
            try:
                refit = g.id in refit_ids
                quota = region_sizes(g) if refit else alloc.quotas[g.id]
                group_cfg = refit_config(cfg) if refit else cfg
                decision, group_layers = solve_group(
                    view, current, g, quota, streams, nxt, len(ctx.split.fit), group_cfg, len(plan.decisions)
                )
                # the current model goes before the next is built (its weights' files are updated in place)
                current = applied = None
                # [R, memory] the arrays are shared within one group's statistics and converted again (the next
                # segment's only) for the next group: a 2.5 GB MLP's solve peaked at 8.3 GB instead of 10.3 GB.
                # PRO's curves keep theirs (released per curve, BERT-base's PRO peak rose from 2757 to 2959 MB)
                view.weights.release()
                release_segments()  # the segment graphs imported so far still refer to that copy
                with stage("rewrite"):
                    trial = plan.extended(spill.decision(decision))
                    del decision
                    changed = rewritten(view, groups, PrunePlan(trial.decisions[-1:]))
                    candidate = _current(view, groups, trial, weights, changed)
                    check_structure(candidate.model, what="the rewrite", error=VerificationError)
            except Exception as e:
                if attempt == 0 and plan.decisions and cfg.mode == "cascade" and _fails(view, groups, plan, probe_feed):
                    plan = _drop_failing(view, groups, plan, probe_feed, failed)  # an earlier group's rewrite
                    applied = _current(view, groups, plan, weights, None)
                    streams[1].reset()
                    continue
                failed[g.id] = one_line(e)
                logger.warning("group %s left unpruned: %s", g.id, failed[g.id])
                break
            plan, applied = trial, candidate
            del candidate  # the only reference to the current model is ``applied``
            layers.extend(group_layers)
            break
    if progress:
        progress(len(todo), len(todo), "")
    del streams, current, applied, weights
    view.weights.release()  # the sessions that shared the arrays are gone
    release_segments()
    return Solved(plan, None, layers, failed)


def runnable(ctx: RunContext, a: Analysis, plan: PrunePlan) -> Pruned:
    """The model with ``plan`` applied, to run: built stubbed when called (see :data:`onnx_poem.verify.Pruned`),
    or the unpruned model."""
    if not plan.decisions:
        return infer_or_keep(ctx.unpruned())
    view = ctx.view

    def build() -> tuple[onnx.ModelProto, Mapping[str, np.ndarray]]:
        model, values = apply_plan_stubbed(view, a.groups, plan)
        return model, session_arrays(view, a.groups, plan, values)

    return build


def _current(
    view: GraphView,
    groups: dict[str, ChannelGroup],
    plan: PrunePlan,
    weights: StoredWeights,
    changed: set[str] | None,
) -> Current:
    """The cascade's model with ``plan`` applied: its large weights stubbed, each session given the
    rewritten ones' new values (held in ``weights``, which are updated: only the ``changed`` ones are written
    again, all if ``None``) and the original's arrays for the rest."""
    if not plan.decisions:
        return Current.original(view)
    model, values = apply_plan_stubbed(view, groups, plan)
    weights.update(values, changed)
    del values
    return Current(model, session_arrays(view, groups, plan, weights))


def verify_solved(ctx: RunContext, a: Analysis, solved: Solved) -> Solved:
    """Agreement on ``--verify-data`` when given, else on the verification split, then the pruned model built
    (:attr:`Solved.model`); a model that fails verification or the checker loses the decisions that break it
    (found one by one) and is verified again."""
    plan, failed = solved.plan, dict(solved.failed)
    try:
        model, agreement = _verified(ctx, a, plan)
    except VerificationError:
        if not plan.decisions:
            raise
        plan = _drop_failing(ctx.view, a.groups, plan, ctx.data.feed(ctx.split.fit[:1]), failed)
        model, agreement = _verified(ctx, a, plan)
    layers = [la for la in solved.layers if la.group not in failed]
    latency = None
    if a.timing is not None:
        with stage("latency"):
            latency = a.timing.ratio(model) if plan.decisions else 1.0
    return Solved(plan, model, layers, failed, agreement, latency)


def _verified(ctx: RunContext, a: Analysis, plan: PrunePlan) -> tuple[onnx.ModelProto, Agreement]:
    """The agreement of the model with ``plan`` applied, run stubbed, then that model built and fully checked.

    [R, memory] Built after the verification, not before: the verification runs the original's session first
    (its outputs kept), then the pruned model's with the new weights as arrays; the pruned protobuf is made only
    then.  A 2.5 GB MLP's run peaked in the verification, with the original, its session's weights, the pruned
    model and the plan in memory at once (9.7 GB)."""
    pruned = runnable(ctx, a, plan)
    agreement = _agreement(ctx, pruned)
    if isinstance(pruned, onnx.ModelProto):
        return pruned, agreement
    ctx.view.weights.release()  # the verification's session is gone
    with stage("rewrite"):
        model = infer_or_keep(apply_plan(ctx.view, a.groups, plan))
        check_model(model, what="pruned model", error=VerificationError)
    with stage("verification"):
        # the model written is the one verified, with its weights stored: onnxruntime must load and run it (one
        # sample; zero weights, which take no memory: the values were verified above)
        try:
            session(model, values=False).run(None, ctx.data.feed(ctx.split.fit[:1]))
        except Exception as e:
            raise VerificationError(f"onnxruntime cannot run the pruned model: {one_line(e)}") from e
    return model, agreement


def _agreement(ctx: RunContext, pruned: Pruned) -> Agreement:
    cfg = ctx.cfg
    with stage("verification"):
        if ctx.checks is not None:
            return verify(ctx.original, pruned, ctx.checks, np.arange(len(ctx.checks)), batch_size=cfg.batch_size,
                          source="--verify-data")  # fmt: skip
        return verify(ctx.original, pruned, ctx.data, ctx.split.verify, batch_size=cfg.batch_size,
                      source="verification split")  # fmt: skip


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
