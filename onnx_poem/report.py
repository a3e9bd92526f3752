"""Run report: MACs and parameters before/after, per-group table, fallbacks, timings.

MACs count the multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul
for one sample (batch 1, other dimensions as in the calibration data).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from .coupling import ChannelGroup
from .graph import GraphView, infer_shapes, with_outputs
from .timing import STAGES
from .verify import Agreement, session

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def count_macs(model: onnx.ModelProto, sample: Mapping[str, np.ndarray]) -> int:
    """Multiply-accumulates for one sample of the Conv/ConvTranspose/Gemm/MatMul nodes of ``model``."""
    return sum(node_macs(model, sample).values())


def node_macs(model: onnx.ModelProto, sample: Mapping[str, np.ndarray]) -> dict[int, int]:
    """Multiply-accumulates per Conv/ConvTranspose/Gemm/MatMul node (by node index) for one sample.

    Shapes come from ONNX shape inference at the sample's input shapes where it resolves them
    fully (the weights' values never matter to it); the rest are measured by running ``sample``
    (a batch of one, every model input) through onnxruntime, so computed reshapes
    (transformers) resolve.  [R, memory] A session of the whole model with its inner tensors as
    outputs holds the model several times over (a 2.57 GB MLP peaked at 10 GB on it); most
    models need none.
    """
    view = GraphView.build(model)
    wanted = [t for n in view.nodes if n.op_type in MAC_OPS for t in (n.input[0], n.input[1], n.output[0])]
    shapes: dict[str, tuple[int, ...]] = {k: tuple(v.shape) for k, v in sample.items()}
    inferred = infer_shapes(model, {k: v.shape for k, v in sample.items()})[0]
    for t, dims in inferred.items():
        if all(isinstance(d, int) and d > 0 for d in dims):
            shapes[t] = tuple(int(d) for d in dims if d is not None)
    dynamic = [t for t in dict.fromkeys(wanted) if t not in shapes and not view.is_const(t)]
    if dynamic:
        # shapes only: the weights' values do not matter unless an op's output shape depends on values
        sess = session(with_outputs(model, dynamic, dtypes=view.dtypes), values=view.shapes_need_values)
        shapes.update({t: tuple(v.shape) for t, v in zip(dynamic, sess.run(dynamic, dict(sample)), strict=True)})
    total: dict[int, int] = {}
    for i, n in enumerate(view.nodes):
        if n.op_type not in MAC_OPS:
            continue
        a, out = shapes[n.input[0]], shapes[n.output[0]]
        w = shapes[n.input[1]] if n.input[1] in shapes else tuple(np.shape(np.asarray(view.const(n.input[1]))))
        if n.op_type == "Conv":
            total[i] = math.prod(out) * math.prod(w[1:])
        elif n.op_type == "ConvTranspose":
            total[i] = math.prod(a[:1]) * math.prod(a[2:]) * math.prod(w)
        else:
            k = a[0] if (n.op_type == "Gemm" and view.attr(i, "transA", 0)) else a[-1]
            total[i] = math.prod(out) * int(k)
    return total


def count_params(model: onnx.ModelProto) -> int:
    """Elements of all initializers and ``Constant`` tensors."""
    total = sum(math.prod(t.dims) for t in model.graph.initializer)
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    total += math.prod(a.t.dims)
    return int(total)


@dataclass
class LayerReport:
    """One reconstructed consumer of one group."""

    group: str
    consumer: str
    channels: int
    kept: int
    activation: str
    damping: float  # the ridge λ of its selection and reconstruction (onnx_poem.damping)
    samples: int
    samples_per_param: float
    errors: dict[str, float] = field(default_factory=dict)
    choice: dict[str, float] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)
    seconds: float = 0.0


#: verification source of a saved plan applied with ``--calib`` (not independent of the plan's fit)
APPLIED_SOURCE = "--calib with --apply-plan"


@dataclass
class PruneReport:
    """Everything a run measured and decided.

    ``calibration_samples`` fit the weights (with ``augmented_samples`` copies of them, ``--augment``),
    ``selection_samples`` chose between
    candidates (POEM/LS per output, PRO's probes), ``verification_samples`` were
    read only by the verification (or came from ``--verify-data``).
    """

    model: str
    method: str
    ratio: float
    mode: str
    seed: int
    calibration_samples: int
    selection_samples: int
    verification_samples: int
    synthetic_calibration: bool
    target_macs: float | None = None
    allocation: str = "uniform"
    damping: float | None = None  # --damping, or None: per group (each layer's report has its λ)
    augmented_samples: int = 0  # --augment: augmented copies of fitting images, fitted beside them
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    layers: list[LayerReport] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    unprunable: list[dict[str, str]] = field(default_factory=list)
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: PRO's error curve per group: ``removed`` atom counts, the output ``error`` each is predicted to cause
    #: (relative, at most 64 points) and the ``cut`` the allocation chose
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied_plan: str | None = None  # --apply-plan: the plan file (nothing was calibrated or solved)
    dry_run: bool = False  # --dry-run: only analysed and allocated; ``macs_after`` is predicted
    #: --latency-on / --target-latency: ``runtime``, ``batch``, ``original_ms``, ``pruned_ms``, ``measured``
    #: (pruned / original, interleaved medians), and with a target: ``target``, ``predicted`` (the table's
    #: prediction for the allocation), ``step``, ``table_seconds`` (0: cached), ``loop`` ([predicted target,
    #: measured] per timed allocation)
    latency: dict[str, Any] = field(default_factory=dict)
    residual: str = "internal"  # --residual (:data:`onnx_poem.config.RESIDUALS`; with auto, the policy kept)
    #: --residual srn / project: ``blocks`` rewritten (their Add outputs) and the residual joins ``left`` as they were
    #: (tensor → why); MACs before are the original's, not the serialised model's
    serialised: dict[str, Any] = field(default_factory=dict)
    #: --residual auto: each policy tried → its mean relative squared output error on the fitting and selection samples
    residual_auto: dict[str, float] = field(default_factory=dict)
    #: --hidden: ``sliced`` and, if so, ``size``/``kept`` (hidden sizes), ``energy_dropped`` (fraction of the
    #: stream's normalised energy in the dropped rotated dimensions), ``layernorms``, ``back_projections``;
    #: else the ``reason`` (:class:`onnx_poem.hidden.Sliced`)
    hidden: dict[str, Any] = field(default_factory=dict)
    #: --hidden auto: each fraction tried → its mean relative squared output error on the fitting and selection samples
    hidden_auto: dict[str, float] = field(default_factory=dict)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def set_agreement(self, a: Agreement) -> None:
        """Record what :func:`onnx_poem.verify.verify` measured (per output, flat numbers; intervals as lists)."""
        self.agreement = {}
        for name, o in a.outputs.items():
            row: dict[str, Any] = {"rel_error": o.rel_error, "max_abs_error": o.max_abs_error}
            for key, e in (
                ("top1_agreement", o.top1),
                ("cosine", o.cosine),
                ("accuracy_original", o.accuracy_original),
                ("accuracy_pruned", o.accuracy_pruned),
            ):
                if e is not None:
                    row[key], row[f"{key}_ci95"] = e.value, [e.low, e.high]
            self.agreement[name] = row
        caveats = a.caveats()
        if self.synthetic_calibration:
            caveats.append(SYNTHETIC_CAVEAT)
        if a.source == APPLIED_SOURCE and a.samples:
            caveats.append("measured on --calib samples the plan may have been fitted on: it can read high")
        self.verification = {"source": a.source, "samples": a.samples, "trusted": not caveats, "caveats": caveats}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macs_ratio"] = self.macs_ratio
        d["params_ratio"] = self.params_ratio
        return _finite(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def _breakdown(self) -> str:
        """`` (statistics 8.1, selection 2.0, ...)``: the stages that took at least 5 % of the time."""
        total = self.timings.get("total", 0.0)
        parts = [
            f"{k} {v:.1f}"
            for k, v in sorted(self.timings.items(), key=lambda kv: -kv[1])
            if k in (*STAGES, "other") and total > 0 and v >= 0.05 * total
        ]
        return f" ({', '.join(parts)})" if parts else ""

    def summary(self) -> str:
        """Human-readable summary table (for a dry run: what would be kept per group, the predicted MACs)."""
        if self.dry_run:
            return self._dry_summary()
        pruned = sum(1 for g in self.groups if g["kept"] < g["channels"])
        lines = [
            f"model        {self.model}",
            f"method       {self.method} ({self.mode}, {self.allocation}), ratio {self.ratio:.3g}"
            + (f" (for MACs target {self.target_macs:g})" if self.target_macs is not None else "")
            + (
                f" (PRO's probe point for latency target {self.latency['target']:.3g})"
                if "target" in self.latency
                else ""
            )
            + f", seed {self.seed}",
            (
                f"plan         applied from {self.applied_plan} (no calibration, nothing solved)"
                if self.applied_plan is not None
                else f"calibration  {self.calibration_samples} samples fit"
                + (" (SYNTHETIC)" if self.synthetic_calibration else "")
                + (f" (+{self.augmented_samples} augmented copies)" if self.augmented_samples else "")
                + f", {self.selection_samples} chose between candidates"
            ),
            f"{'':13}{'before':>14}{'after':>14}{'ratio':>9}",
            f"{'MACs':13}{self.macs_before:>14,}{self.macs_after:>14,}{self.macs_ratio:>9.3f}",
            f"{'params':13}{self.params_before:>14,}{self.params_after:>14,}{self.params_ratio:>9.3f}",
            f"groups       {pruned} of {len(self.groups)} pruned; {len(self.unprunable)} parts left unpruned",
        ]
        lines += self._residual_lines()
        lines += self._hidden_lines()
        lines += self._latency_lines()
        lines += self._agreement_lines()
        lines += [f"warning      {w}" for w in self.warnings]
        lines.append(f"time         {self.timings.get('total', 0.0):.1f} s{self._breakdown()}")
        return "\n".join(lines)

    def _residual_lines(self) -> list[str]:
        lines = []
        if self.residual_auto:
            tried = ", ".join(f"{p} {e:.4f}" for p, e in self.residual_auto.items())
            lines.append(
                f"residual     auto chose {self.residual} (relative squared output error on the fitting and selection "
                f"samples: {tried}; another than internal only when lower by > 2 standard errors)"
            )
        if not self.serialised:
            return lines
        blocks, left = self.serialised["blocks"], self.serialised["left"]
        how = "serialised into chains" if self.residual == "srn" else "shortcuts as 1x1 convs"
        lines.append(f"{self.residual:13}{len(blocks)} residual block(s) rewritten ({how}), {len(left)} left")
        return lines + [f"{'  left':13}{where}: {why}" for where, why in left.items()]

    def hidden_text(self) -> str:
        """What ``--hidden`` did, in words ("" without it)."""
        h = self.hidden
        if not h:
            return ""
        if not h["sliced"]:
            return f"left as it is: {h['reason']}"
        back = f", {h['back_projections']} back-projected" if h["back_projections"] else ""
        return (
            f"{h['kept']} of {h['size']} dimensions kept (rotated; {100 * h['energy_dropped']:.2f} % of the stream's "
            f"normalised energy dropped), {h['layernorms']} normalisations made RMS norms{back}"
        )

    def _hidden_lines(self) -> list[str]:
        lines = [f"hidden       {self.hidden_text()}"] if self.hidden else []
        if self.hidden_auto:
            chosen = (
                f"{self.hidden['size'] - self.hidden['kept']} of {self.hidden['size']} dimensions"
                if self.hidden.get("sliced")
                else "nothing"
            )
            tried = ", ".join(f"{f} {e:.4f}" for f, e in self.hidden_auto.items())
            lines.append(
                f"{'' if self.hidden else 'hidden':13}auto sliced {chosen} (relative squared output error on the "
                f"fitting and selection samples per "
                f"fraction: {tried}; a larger one only when lower by > 2 standard errors)"
            )
        return lines

    def _latency_lines(self) -> list[str]:
        lat = self.latency
        if not lat:
            return []
        line = f"latency      {lat['runtime']}, batch {lat['batch']}: {lat['original_ms']:.2f} ms"
        if "pruned_ms" not in lat and "widths_measured" in lat:
            line += f" -> {lat['widths_measured']:.3f} of it measured at the allocated widths"
        if "pruned_ms" in lat:
            line += f" -> {lat['pruned_ms']:.2f} ms ({lat['measured']:.3f}"
            if "target" in lat:
                line += f"; target {lat['target']:.3f}, per-layer table predicted {lat['predicted']:.3f}"
            line += ")"
        return [line]

    def _dry_summary(self) -> str:
        lines = [f"model        {self.model}", f"method       {self.method} ({self.allocation}), ratio {self.ratio:g}"]
        lines.append(f"MACs         {self.macs_before:,} -> {self.macs_after:,} predicted ({self.macs_ratio:.3f})")
        lines.append(
            f"groups       {sum(g['kept'] < g['channels'] for g in self.groups)} of {len(self.groups)} would be pruned"
        )
        lines += [f"  {g['group']}: keep {g['kept']} of {g['channels']}" for g in self.groups]
        lines += [f"unpruned     {u['where']}: {u['reason']}" for u in self.unprunable]
        lines += self._latency_lines()
        lines.append(f"time         {self.timings.get('total', 0.0):.1f} s (dry run: nothing solved or written)")
        return "\n".join(lines)

    def _agreement_lines(self) -> list[str]:
        v = self.verification
        n = v.get("samples", 0)
        if v.get("source") == APPLIED_SOURCE:  # a saved plan applied: the planning run may have fitted on them
            where = f"{n} samples of --calib (the plan may have been fitted on them: not independent)"
        else:
            where = (
                f"{n} samples of --verify-data" if v.get("source") == "--verify-data" else f"{n} verification samples"
            ) + " never used for fitting or selection"
        lines = []
        if n:
            for name, a in self.agreement.items():
                parts = [f"rel. error {a['rel_error']:.4f}"]
                for key, label in (("top1_agreement", "top-1 agreement"), ("accuracy_pruned", "top-1 accuracy")):
                    if key in a:
                        lo, hi = a[f"{key}_ci95"]
                        parts.append(f"{label} {100 * a[key]:.1f} % (95 % CI {100 * lo:.1f}-{100 * hi:.1f})")
                if "accuracy_original" in a:
                    parts.append(f"original {100 * a['accuracy_original']:.1f} %")
                if "cosine" in a:
                    lo, hi = a["cosine_ci95"]
                    parts.append(f"centred cosine {a['cosine']:.4f} (95 % CI {lo:.4f}-{hi:.4f})")
                lines.append(f"output       {name}: " + ", ".join(parts))
            lines.append(f"verified on  {where}")
        lines += [f"caution      {c}" for c in v.get("caveats", [])]
        return lines


#: what the summary says whenever calibration data was synthetic
SYNTHETIC_CAVEAT = "calibrated on synthetic inputs: agreement measured on synthetic inputs says little about real data"


def curve_points(curve: np.ndarray, cut: int, points: int = 64) -> dict[str, Any]:
    """A PRO curve (``curve[j-1]``: the output error of removing ``j`` atoms) as at most ``points`` points,
    with the number of atoms the allocation removed."""
    removed = np.unique(np.linspace(1, len(curve), min(points, len(curve))).round().astype(int))
    return {
        "removed": [0, *(int(j) for j in removed)],
        "error": [0.0, *(float(curve[j - 1]) for j in removed)],
        "cut": int(cut),
    }


def _finite(x: Any) -> Any:
    """Replace NaN/Inf by ``None`` so the JSON is standard."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float | np.floating) and not math.isfinite(float(x)):
        return None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


def _unit(g: ChannelGroup) -> str:
    """What one atom of ``g`` is, for the report."""
    if g.heads:
        return "key/value head" if g.repeat > 1 else "head"
    return "conv group" if g.block > 1 else "channel"


def group_rows(view: GraphView, groups: Sequence[ChannelGroup], keeps: Mapping[str, int]) -> list[dict[str, Any]]:
    """The report's table of groups: size, kept count, members (grouped-query attention: the key/value heads'
    channels, each unit a key/value head with ``query_heads_per_unit`` query heads)."""
    return [
        {
            "group": g.id,
            "channels": g.channels * g.block,
            "kept": keeps[g.id] * g.block,
            "channels_per_unit": g.block,
            "unit": _unit(g),
            "query_heads_per_unit": g.repeat,
            "residual": g.residual,
            "producers": [view.node_label(p) for p in g.producers],
            "consumers": [c.label for c in g.consumers],
            "tensors": len(g.tensors),
        }
        for g in groups
    ]
