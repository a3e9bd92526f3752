"""The run's report, built once from the stages' results, and what a saved plan records of the run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..allocation import MacsTable, keep_counts
from ..config import PruneConfig
from ..coupling import ChannelGroup
from ..modelio import digest
from ..planfile import PlanContext
from ..report import PruneReport, count_macs, count_params, curve_points, group_rows
from .context import Allocation, Analysis, RunContext, Solved


def build_report(ctx: RunContext, a: Analysis, alloc: Allocation, solved: Solved | None) -> PruneReport:
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
        report.macs_after = round(macs * a.table.predict(a.free, {g.id: keeps[g.id] for g in a.free}, alloc.quotas))
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
    assert solved.model is not None, "the report is built from a verified solve"
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


def plan_context(ctx: RunContext) -> PlanContext:
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
