"""Check a rewritten model and compare it with the original on verification samples.

The samples given here must be ones the tool never fitted or chose on (the
verification split of :mod:`onnx_poem.calibration.split`, or a separate
``--verify-data`` set), so every number is an estimate for unseen data of the
same distribution.  Rates come with their 95 % Wilson interval, means with a
normal-approximation interval, and the count they rest on.

Per output ``o`` (original ``y``, pruned ``ŷ``, ``N`` samples):

* ``rel_error = ‖ŷ − y‖ / ‖y − ȳ‖`` over all samples, ``ȳ`` the original's mean
  output (an error relative to the output's spread, not to its offset);
* for ``(N, K)`` outputs with ``K > 1``: top-1 agreement (same argmax) as a
  rate, and the *centred* cosine ``cos(ŷ_i − ȳ, y_i − ȳ)`` averaged over
  samples (an uncentred cosine is close to 1 for any output dominated by its
  mean);
* with labels: top-1 accuracy of both models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .calibration.sources import CalibrationData
from .errors import VerificationError
from .graph import check_model, check_structure, session

Z95 = 1.959963984540054
#: below this many verification samples, or with an interval wider than this, the estimate is flagged
MIN_SAMPLES = 100
MAX_WIDTH = 0.10


@dataclass(frozen=True)
class Estimate:
    """A value with its 95 % interval ``[low, high]`` over ``n`` samples."""

    value: float
    low: float
    high: float
    n: int

    @property
    def width(self) -> float:
        return self.high - self.low


def wilson(k: int, n: int) -> Estimate:
    """Rate ``k/n`` with its 95 % Wilson score interval."""
    if n <= 0:
        return Estimate(float("nan"), 0.0, 1.0, 0)
    p = k / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Estimate(p, min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)), n)


def mean_interval(values: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> Estimate:
    """Mean of ``values`` with a 95 % normal-approximation interval, clipped to ``[lo, hi]``."""
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), lo, hi, 0)
    m = float(np.mean(values))
    half = Z95 * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else hi - lo
    return Estimate(m, max(lo, m - half), min(hi, m + half), n)


@dataclass(frozen=True)
class OutputAgreement:
    """Agreement of one graph output (see the module docstring)."""

    rel_error: float
    max_abs_error: float
    top1: Estimate | None = None
    cosine: Estimate | None = None
    accuracy_original: Estimate | None = None
    accuracy_pruned: Estimate | None = None


@dataclass(frozen=True)
class Agreement:
    """What :func:`verify` measured: ``source`` names the samples, ``samples`` counts them."""

    source: str
    samples: int
    outputs: dict[str, OutputAgreement] = field(default_factory=dict)

    def caveats(self) -> list[str]:
        """Plain-words reasons not to trust the estimate (empty when it can be trusted)."""
        out = []
        if self.samples == 0:
            return ["no verification samples: agreement with the original was not measured"]
        if self.samples < MIN_SAMPLES:
            out.append(f"only {self.samples} verification samples (< {MIN_SAMPLES}): the estimate is rough")
        widths = [e.width for o in self.outputs.values() for e in (o.top1, o.cosine) if e is not None]
        if widths and max(widths) > MAX_WIDTH:
            out.append(f"the 95 % interval is {100 * max(widths):.0f} points wide (> 10): too wide to trust")
        return out


#: a pruned model, or a function that builds it as a stubbed model with the arrays its stubs take
#: (:func:`onnx_poem.rewrite.apply_plan_stubbed`), called once the original's outputs are computed
Pruned = onnx.ModelProto | Callable[[], tuple[onnx.ModelProto, Mapping[str, np.ndarray]]]


def verify(
    original: onnx.ModelProto,
    pruned: Pruned,
    data: CalibrationData,
    indices: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    source: str,
) -> Agreement:
    """Check ``pruned`` and measure its agreement with ``original`` on samples ``indices`` of ``data``.

    With no indices the model is still checked and run once on sample 0 (validity only).  A stubbed ``pruned``
    (built by a function) gets the structural check (:func:`onnx_poem.graph.check_structure`); its full check is
    the caller's, on the model it writes.

    Raises:
        VerificationError: the checker rejects ``pruned``, onnxruntime cannot run it, or an output changed shape.
    """
    if not callable(pruned):
        check_model(pruned, what="pruned model", error=VerificationError)
    names = [o.name for o in original.graph.output]
    scores = {n: _is_scores(original, n) for n in names}
    idx = np.asarray(indices, dtype=np.int64)
    acc = {n: _Accumulator(keep=scores[n]) for n in names}

    def batches() -> Iterator[dict[str, np.ndarray]]:
        return data.batches(idx if len(idx) else np.zeros(1, np.int64), batch_size)

    for ref, got in _both_outputs(original, pruned, names, batches):
        for n, r, o in zip(names, ref, got, strict=True):
            if np.shape(r) != np.shape(o):
                raise VerificationError(f"output {n} changed shape from {np.shape(r)} to {np.shape(o)}")
            acc[n].add(np.asarray(r, dtype=np.float64), np.asarray(o, dtype=np.float64))
    if not len(idx):
        return Agreement(source, 0)
    labels = None if data.labels is None else np.asarray(data.labels)[idx]
    return Agreement(source, len(idx), {n: acc[n].result(labels) for n in names})


def sample_errors(
    original: onnx.ModelProto,
    pruned: Pruned,
    data: CalibrationData,
    indices: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
) -> np.ndarray:
    """Per sample of ``indices``: ``‖y_p − y‖² / ‖y‖²`` of each graph output (its rows: axis 0 is the batch),
    averaged over the outputs; shape ``[len(indices)]``.  Outputs without a batch axis are not counted."""
    names = [o.name for o in original.graph.output]
    idx = np.asarray(indices, dtype=np.int64)
    out = np.zeros(len(idx))
    start = 0
    for ref, got in _both_outputs(original, pruned, names, lambda: data.batches(idx, batch_size)):
        n = min(batch_size, len(idx) - start)
        per = [
            ((np.asarray(o, np.float64) - np.asarray(r, np.float64)).reshape(n, -1) ** 2).sum(1)
            / ((np.asarray(r, np.float64).reshape(n, -1) ** 2).sum(1) + 1e-30)
            for r, o in zip(ref, got, strict=True)
            if np.ndim(r) and np.shape(r)[0] == n and np.shape(o) == np.shape(r)
        ]
        if per:
            out[start : start + n] = np.mean(per, axis=0)
        start += n
    return out


def _both_outputs(
    original: onnx.ModelProto,
    pruned: Pruned,
    names: list[str],
    batches: Callable[[], Iterator[dict[str, np.ndarray]]],
) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Per batch of ``batches()``: both models' outputs ``names``.

    [R, memory] When the original's outputs of every batch fit in :data:`REFERENCE_BYTES` they are
    computed first and its session is released before the pruned model's is built: one
    onnxruntime copy of the weights at a time (a whole model's worth less at the peak of a
    large model's run), and a ``pruned`` given as a function is built only then.  Otherwise both
    sessions run batch by batch.
    """
    s_orig = session(original, prepack=False)
    refs: list[list[np.ndarray]] = []
    size = 0
    for feed in batches():
        refs.append(s_orig.run(names, feed))
        size += sum(np.asarray(r).nbytes for r in refs[-1])
        if size > REFERENCE_BYTES:
            break
    keep = size <= REFERENCE_BYTES
    if keep:
        del s_orig
    else:
        refs.clear()  # too large to keep: run both models batch by batch
    shared: Mapping[str, np.ndarray] | None = None
    if callable(pruned):
        pruned, shared = pruned()
        check_structure(pruned, what="pruned model", error=VerificationError)
    try:
        s_pruned = session(pruned, prepack=False, shared=shared)
    except Exception as e:
        raise VerificationError(f"onnxruntime cannot load the pruned model: {e}") from e
    for i, feed in enumerate(batches()):
        ref = refs[i] if keep else s_orig.run(names, feed)
        try:
            got = s_pruned.run(names, feed)
        except Exception as e:
            raise VerificationError(f"onnxruntime failed to run the pruned model: {e}") from e
        yield ref, got


#: the original's outputs are kept for all verification batches up to this size (see :func:`_both_outputs`)
REFERENCE_BYTES = 256 * 2**20


class _Accumulator:
    """Streaming error sums of one output; ``(N, K)`` score outputs are also kept for per-sample measures."""

    def __init__(self, *, keep: bool) -> None:
        self.keep = keep
        self.count = 0
        self.total: np.ndarray | float = 0.0  # Σ r (elementwise)
        self.sq = self.err = self.max_abs = 0.0
        self.refs: list[np.ndarray] = []
        self.outs: list[np.ndarray] = []

    def add(self, r: np.ndarray, o: np.ndarray) -> None:
        rows = r if r.ndim else r[None]
        self.total = self.total + rows.sum(axis=0)
        self.count += len(rows)
        self.sq += float(np.sum(r * r))
        self.err += float(np.sum((o - r) ** 2))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(o - r))) if r.size else 0.0)
        if self.keep:
            self.refs.append(r)
            self.outs.append(o)

    def result(self, labels: np.ndarray | None) -> OutputAgreement:
        spread = self.sq - float(np.sum(np.asarray(self.total) ** 2)) / max(self.count, 1)
        # a (nearly) constant output has no spread to compare with: fall back to its size
        rel = math.sqrt(self.err / max(spread, 1e-12 * self.sq, 1e-300))
        if not self.keep or not self.refs:
            return OutputAgreement(rel, self.max_abs)
        r, o = np.concatenate(self.refs), np.concatenate(self.outs)
        n = len(r)
        top_r, top_o = np.argmax(r, axis=1), np.argmax(o, axis=1)
        rc, oc = r - r.mean(axis=0), o - r.mean(axis=0)
        norms = np.linalg.norm(rc, axis=1) * np.linalg.norm(oc, axis=1)
        cos = np.where(norms > 0, np.sum(rc * oc, axis=1) / np.maximum(norms, 1e-300), 1.0)
        acc_r = acc_o = None
        if labels is not None and len(labels) == n:
            acc_r = wilson(int(np.sum(top_r == labels)), n)
            acc_o = wilson(int(np.sum(top_o == labels)), n)
        return OutputAgreement(
            rel, self.max_abs, wilson(int(np.sum(top_r == top_o)), n), mean_interval(cos), acc_r, acc_o
        )


def _is_scores(model: onnx.ModelProto, name: str) -> bool:
    """A ``(N, K)`` output with ``K > 1`` (class scores or an embedding)."""
    for o in model.graph.output:
        if o.name == name:
            dims = o.type.tensor_type.shape.dim
            return len(dims) == 2 and (not dims[1].HasField("dim_value") or dims[1].dim_value > 1)
    return False
