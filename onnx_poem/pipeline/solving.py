"""The ``solve`` stage (the cascade over the groups, with each rewrite checked) and the ``verify`` stage; a decision
whose rewrite breaks the model is dropped and its group left unpruned with the reason."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ..cascade import Current, Stream, cut_position
from ..coupling import ChannelGroup
from ..errors import VerificationError, one_line
from ..graph import GraphView, check_model, check_structure, release_segments
from ..modelio import infer_or_keep
from ..plan import PrunePlan
from ..rewrite import apply_plan, rewritten
from ..solve import solve_group
from ..timing import stage
from ..verify import Agreement, session, verify
from .context import Allocation, Analysis, Progress, RunContext, Solved

logger = logging.getLogger(__name__)


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


def verify_solved(ctx: RunContext, a: Analysis, solved: Solved) -> Solved:
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
