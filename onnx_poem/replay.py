"""Apply a saved plan (``--apply-plan``) to the same model, without calibration."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from . import planfile
from .calibration.sources import ImageOptions, load_calibration
from .config import SERIALISED_FORMS, STREAM_GROUPS
from .coupling import find_groups
from .coupling.refit import reader_refits, refit_groups
from .errors import UsageError
from .external import legacy_digest
from .fold import fold_constants
from .graph import GraphView
from .modelio import copy_model, digest, infer_or_keep, load_checked
from .report import APPLIED_SOURCE, PruneReport, count_macs, count_params, group_rows
from .rewrite import apply_plan
from .srn import serialise
from .timing import Clock, bind, stage
from .verify import verify


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
            model, name = load_checked(model)
            original = model = fold_constants(model)
            form = SERIALISED_FORMS.get(ctx.residual)
            if form is not None:
                model = serialise(original, form).model
            if digest(model) != ctx.model_sha256 and legacy_digest(model) != ctx.model_sha256:
                raise UsageError(f"{plan_file} was computed for another model ({ctx.model_name}), not {name}")
            view = GraphView.build(model, input_shapes=ctx.input_shapes)
            coupling = find_groups(view, residual=ctx.residual in STREAM_GROUPS).groups
            groups = {g.id: g for g in coupling}
            # the plan's refits of stream readers (coupling.refit), where the run made them
            groups |= refit_groups(reader_refits(view, coupling))
        for d in plan.decisions:
            if d.group_id not in groups or groups[d.group_id].channels != d.channels:
                raise UsageError(f"{plan_file}: group {d.group_id} ({d.channels} channels) is not in this model")
        with stage("rewrite"):
            pruned = infer_or_keep(apply_plan(view, groups, plan) if plan.decisions else copy_model(original))
        zeros = {n: np.zeros(tuple(ctx.input_shapes[n]), dtype=view.dtypes.get(n, np.float32)) for n in view.inputs}
        data = load_calibration(
            original, zeros if calib is None else calib, samples=samples, seed=0, image_options=image_options
        )
        with stage("verification"):
            agreement = verify(
                original,
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
        allocation=str(settings.get("allocation", "?")),
        applied_plan=str(plan_file),
    )
    kept = {d.group_id: len(d.keep) for d in plan.decisions}
    report.groups = group_rows(view, list(groups.values()), {g: kept.get(g, c.channels) for g, c in groups.items()})
    report.set_agreement(agreement)
    one = data.feed([0])
    report.macs_before, report.params_before = count_macs(original, one), count_params(original)
    report.residual = ctx.residual
    report.macs_after, report.params_after = count_macs(pruned, one), count_params(pruned)
    report.timings.update(clock.timings(t0))
    return pruned, report
