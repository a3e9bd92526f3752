"""What the stages of a run share: its loaded inputs, the frozen run context, and each stage's typed result."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ..allocation import MacsTable
from ..calibration.augment import augment_fit
from ..calibration.sources import CalibrationData, ImageOptions, load_calibration
from ..calibration.split import Split, split_samples
from ..config import PruneConfig
from ..coupling import ChannelGroup, Coupling
from ..fold import fold_constants
from ..graph import GraphView, declared_shape, load_model, trim_heap
from ..hidden import Measured, NotSliceable, Sliced, measure, slice_measured
from ..latency import Fit, LatencyTable, Timing
from ..modelio import copy_model, load_checked
from ..plan import PrunePlan
from ..planfile import PlanContext
from ..report import LayerReport, PruneReport
from ..srn import Serialised, serialise
from ..timing import stage
from ..verify import Agreement

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class PruneResult:
    """What a run produced: the pruned model (``None`` for a dry run), its report, the plan that was
    applied and what the plan was computed for (to save it with :func:`onnx_poem.planfile.encode`)."""

    model: onnx.ModelProto | None
    report: PruneReport
    plan: PrunePlan
    context: PlanContext


@dataclass(frozen=True)
class Inputs:
    """The loaded inputs of a run."""

    cfg: PruneConfig  # the batch size clamped to a fixed batch dimension of the model
    name: str
    model: onnx.ModelProto  # checked, constant-folded (and serialised with --residual srn): what is pruned
    original: onnx.ModelProto  # checked, constant-folded: what outputs and MACs are compared with
    serialised: Serialised | None  # --residual srn: the blocks serialised and those left
    data: CalibrationData
    checks: CalibrationData | None  # --verify-data
    loaded: onnx.ModelProto | Path  # as loaded (written back when nothing is pruned), or its file (:func:`reloaded`)


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
        return reloaded(self.loaded)


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
    #: per group id, the layers reading a residual stream refitted just before it (coupling.refit; their
    #: pseudo-groups are in :attr:`groups`, not in :attr:`coupling`)
    refits: dict[str, tuple[ChannelGroup, ...]] = field(default_factory=dict)


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
    model: onnx.ModelProto | None  # built by ``verify`` (None from ``solve``: see pipeline.solving.runnable)
    layers: list[LayerReport]
    failed: dict[str, str]
    agreement: Agreement | None = None
    latency: float | None = None  # the pruned model's latency over the original's (--latency-on)


#: a candidate of --residual auto / --hidden auto: its per-sample errors, context, analysis, allocation and solve
Tried = tuple[np.ndarray, RunContext, Analysis, Allocation, Solved]


def build_context(inputs: Inputs, workdir: Path) -> RunContext:
    cfg, data = inputs.cfg, inputs.data
    split = split_samples(len(data), seed=cfg.seed, verify=inputs.checks is None)
    if cfg.augment:  # copies of the fitting images only: selection and verification stay real
        data, copies = augment_fit(data, split.fit, cfg.augment, cfg.seed, workdir)
        split = replace(split, fit=np.concatenate([split.fit, copies]))
    view = GraphView.build(inputs.model, input_shapes=data.sample_shapes())
    chunks = batch_chunks(split, cfg.batch_size)
    ctx = RunContext(
        cfg, inputs.name, inputs.model, inputs.original, inputs.serialised, data, inputs.checks, split, view, chunks,
        workdir, inputs.loaded,
    )  # fmt: skip
    if cfg.hidden <= 0:
        return ctx
    with stage("statistics"):
        measured = measure(view, data, fit_chunks(ctx))
    if isinstance(measured, NotSliceable):
        return replace(ctx, hidden=Sliced(None, reason=measured.reason))
    return with_hidden_sliced(ctx, cfg.hidden, measured)


def batch_chunks(split: Split, size: int) -> list[np.ndarray]:
    """The calibration runs' batches: the fitting samples, then the selection samples, ``size`` at a time."""
    return [idx[i : i + size] for idx in (split.fit, split.select) for i in range(0, len(idx), size)]


def fit_chunks(ctx: RunContext) -> list[np.ndarray]:
    """The batches of fitting samples among the run's (the rest are selection samples)."""
    return [c for c in ctx.chunks if np.isin(c, ctx.split.fit).all()]


def with_hidden_sliced(ctx: RunContext, fraction: float, measured: Measured) -> RunContext:
    """``ctx`` with ``fraction`` of the hidden size sliced (:func:`onnx_poem.hidden.slice_measured`): its model and
    view are the sliced ones."""
    with stage("statistics"):
        sliced = slice_measured(ctx.model, measured, fraction, ctx.cfg.hidden_rotation)
    assert sliced.model is not None  # slice_measured always slices
    view = GraphView.build(sliced.model, input_shapes=ctx.data.sample_shapes())
    return replace(ctx, model=sliced.model, view=view, hidden=sliced)


@dataclass(frozen=True)
class Curves:
    """PRO's error curves per group (measured once; a family of budgets shares them) and the groups whose
    curve failed, with why."""

    curves: dict[str, np.ndarray]
    failed: dict[str, str]
    seconds: float


def load_inputs(
    model: onnx.ModelProto | str | Path,
    cfg: PruneConfig,
    calib: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    image_options: ImageOptions | None,
    verify_data: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
) -> Inputs:
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
    fixed = list(fixed_batches(model, data.arrays).values())
    if fixed and min(fixed) < cfg.batch_size:  # a model exported for a fixed batch (often 1)
        cfg = replace(cfg, batch_size=min(fixed))
    return Inputs(cfg, name, model, original, serialised, data, checks, as_loaded)


def reloaded(loaded: onnx.ModelProto | Path) -> onnx.ModelProto:
    """A copy of the model as loaded (:attr:`RunContext.loaded`), read again from its file if it was not kept."""
    return load_model(loaded) if isinstance(loaded, Path) else copy_model(loaded)


def fixed_batches(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, int]:
    """Input name → its declared batch size, for the inputs among ``names`` exported with a fixed one."""
    out = {}
    for name in names:
        dims = declared_shape(model, name)
        if dims and isinstance(dims[0], int) and dims[0] > 0:
            out[name] = dims[0]
    return out


#: --verify-data: at most this many samples are read
VERIFY_DATA_MAX = 100_000
