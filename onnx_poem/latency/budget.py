"""A latency budget: the table (measured or cached), the original's latency, PRO's cost in seconds, and the
closed loop that makes the budget hold on the runtime.

The table's prediction is a sum of nodes timed alone, which is not the model's
latency (fusion, memory traffic between nodes), so the allocation is checked by
timing the whole model at the allocated widths (:func:`onnx_poem.latency.widths.width_model`,
interleaved with the original) and the predicted target is corrected by the
measured/predicted ratio until the measurement is at most the target
(:func:`fit_target`, at most :data:`ROUNDS` models timed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..allocation import uniform_ratio_for
from ..coupling import ChannelGroup
from ..graph import GraphView
from .runtimes import Runner, Runtime, time_one, time_pairs
from .table import LatencyTable
from .widths import width_model

logger = logging.getLogger(__name__)

#: whole-model timings the closed loop may spend
ROUNDS = 5
#: pairs of runs (original, candidate) per whole-model timing at least, and seconds at least
RUNS = 10
SECONDS = 2.0
#: a measurement within this fraction below the target ends the loop early
CLOSE = 0.03
#: version of the cached tables' contents (part of the cache key)
FORMAT = 3
#: channel steps the probe tries below 8 (8 when none of them is as fast as aligned counts)
STEPS = (1, 2, 4)
#: the share of their linear part of the saving of 8 fewer channels that ``d`` fewer must save
STEP_SHARE = 0.5


def cache_dir(configured: str | None) -> Path:
    """Where tables are cached: ``configured``, else ``$ONNX_POEM_CACHE``, else ``$XDG_CACHE_HOME/onnx-poem``
    (``~/.cache/onnx-poem``), each with ``latency/`` below it."""
    root = configured or os.environ.get("ONNX_POEM_CACHE")
    if root is None:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnx-poem")
    return Path(root) / "latency"


def cache_key(model_digest: str, feed: Mapping[str, np.ndarray], runtime: Runtime, free: Sequence[ChannelGroup],
              step: int | None) -> str:  # fmt: skip
    """What a table depends on: the model, the input shapes, the runtime and its version, the machine,
    the groups and the requested step."""
    facts = [
        FORMAT, model_digest, sorted((k, list(v.shape)) for k, v in feed.items()), runtime.name, ort.__version__,
        platform.machine(), platform.processor(), os.cpu_count(), [(g.id, g.channels) for g in free], step,
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


def save_cached(path: Path, table: LatencyTable) -> None:
    """Write ``table`` to ``path`` atomically (a run interrupted here leaves no partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(table.to_json(), sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def probe_step(
    view: GraphView, groups: Mapping[str, ChannelGroup], free: Sequence[ChannelGroup], timing: Timing
) -> tuple[int, dict[str, float]]:
    """The channel step the runtime wants, from whole-model timings.

    Every free group (each region of ``n >= 32`` atoms) at ``k = 8·⌊n/16⌋`` (aligned to 8, about half) is
    timed, and the same with ``k − 8`` and ``k − d`` for ``d`` in :data:`STEPS`; the step is the smallest
    ``d`` whose ``d`` fewer channels save at least :data:`STEP_SHARE` of their linear share of what 8 fewer
    save, ``L(k) − L(k−d) >= STEP_SHARE·(d/8)·(L(k) − L(k−8))``, else 8.  Returns the step and the measured
    ratios to the original (``"0"``: aligned, ``"d"``: ``d`` fewer).

    [measured] "Not slower than aligned" is too weak: on ResNet-20 (batch 32, 2 threads) multiples of 4
    measured 0.693 against 0.735 aligned and 0.487 at 8 fewer, and allocations in steps of 4 then ran
    slower than in steps of 8 at the same MACs.
    """

    def quotas(d: int) -> dict[str, np.ndarray]:
        out = {}
        for g in free:
            sizes = np.bincount(np.asarray(g.regions)) if g.regions is not None else np.array([g.channels])
            out[g.id] = np.where(sizes >= 32, 8 * (sizes // 16) - d, sizes)
        return out

    probe = {str(d): timing.ratio(width_model(view, groups, quotas(d))) for d in (0, 8)}
    saving8 = probe["0"] - probe["8"]
    for d in STEPS:
        probe[str(d)] = timing.ratio(width_model(view, groups, quotas(d)))
        if saving8 > 0 and probe["0"] - probe[str(d)] >= STEP_SHARE * d / 8 * saving8:
            logger.info("channel step %d on %s (whole-model ratios %s)", d, timing.runtime.name, probe)
            return d, probe
    logger.info("channel step 8 on %s (whole-model ratios %s)", timing.runtime.name, probe)
    return 8, probe


class LatencyCost:
    """PRO's :class:`~onnx_poem.allocation.Cost` in measured seconds (:meth:`LatencyTable.predict`'s sum,
    updated move by move)."""

    def __init__(self, groups: Sequence[ChannelGroup], table: LatencyTable) -> None:
        pos = {g.id: i for i, g in enumerate(groups)}
        self.total = sum(table.base.values()) or 1.0
        self.value = self.total
        self.kept = [g.channels for g in groups]
        self.base: list[float] = []
        self.luts: list[list[np.ndarray]] = []
        self.cur: list[list[float]] = []
        self.rows_of: list[list[tuple[int, int]]] = [[] for _ in groups]
        for node, gids in table.touching().items():
            own = [g for g in gids if g in pos]
            if not own:
                continue
            r = len(self.base)
            self.base.append(table.base[node])
            self.luts.append([table.factors(g, node) for g in own])
            self.cur.append([1.0] * len(own))
            for j, g in enumerate(own):
                self.rows_of[pos[g]].append((r, j))

    def fraction(self) -> float:
        return self.value / self.total

    def saving(self, i: int, n: int) -> float:
        s = 0.0
        for r, j in self.rows_of[i]:
            f = self.cur[r]
            new = list(f)
            new[j] = float(self.luts[r][j][self.kept[i] - n])
            s += self.base[r] * (math.prod(f) - math.prod(new))
        return s

    def apply(self, i: int, n: int, saving: float) -> None:
        self.kept[i] -= n
        for r, j in self.rows_of[i]:
            self.cur[r][j] = float(self.luts[r][j][self.kept[i]])
        self.value -= saving


def ratio_for_latency(groups: Sequence[ChannelGroup], table: LatencyTable, target: float, step: int) -> float:
    """The smallest uniform ratio whose predicted latency fraction is at most ``target`` (bisection)."""
    return uniform_ratio_for(table.predict, groups, target, step)


@dataclass(frozen=True)
class Fit:
    """The closed loop's result: the quotas, the predicted target they were allocated for, their measured
    latency over the original's, every (predicted target, measured ratio) tried, and the candidate's label."""

    quotas: dict[str, np.ndarray]
    predicted: float
    measured: float
    history: tuple[tuple[float, float], ...]
    label: str = ""
    error: float = float("nan")  # the candidate's predicted output error (fit_best)


def fit_best(
    candidates: Sequence[tuple[str, Callable[[float], dict[str, np.ndarray]]]],
    measure: Callable[[dict[str, np.ndarray]], float],
    target: float,
    error: Callable[[dict[str, np.ndarray]], float],
) -> tuple[Fit, list[Fit]]:
    """:func:`fit_target` for each ``(label, allocate)`` candidate; of those that measure at most ``target``
    the one with the smallest predicted ``error`` (PRO's: the sum of the groups' curves at their cuts), else
    the fastest.  Returns the chosen fit and all of them.

    [measured] Per-layer tables of nodes timed alone can misjudge where the whole model's time goes: on
    ResNet-20 (batch 32, 2 threads) the table's allocation measured 0.64 at 29.7 % top-1 where PRO by MACs at
    the same MACs measured 0.58 at 43.2 %.  Both are timed here, and the error curves decide.
    """
    fits = [fit_target(allocate, measure, target) for _, allocate in candidates]
    fits = [replace(f, label=label, error=error(f.quotas)) for (label, _), f in zip(candidates, fits, strict=True)]
    meeting = [f for f in fits if f.measured <= target]
    best = min(meeting, key=lambda f: (f.error, -f.measured)) if meeting else min(fits, key=lambda f: f.measured)
    return best, fits


def fit_target(
    allocate: Callable[[float], dict[str, np.ndarray]],
    measure: Callable[[dict[str, np.ndarray]], float],
    target: float,
) -> Fit:
    """Allocate for a predicted target ``t``, time the result (``r``), move ``t`` by a secant step on the
    last two ``(t, r)`` (aiming :data:`CLOSE`/2 below ``target``: latency is not proportional to the
    prediction, a part of the model is never pruned), or by ``target / r`` while there is no slope; keep the
    least pruned allocation that measures at most ``target`` (or, when none does within :data:`ROUNDS`
    timings, the fastest one).  An allocation already timed is not timed again."""
    aim = target * (1 - CLOSE / 2)
    t, history = target, []
    fits: list[Fit] = []
    for _ in range(2 * ROUNDS):
        quotas = allocate(t)
        same = next((f for f in fits if all(np.array_equal(f.quotas[g], q) for g, q in quotas.items())), None)
        if same is None:
            if len(fits) == ROUNDS:
                break
            same = Fit(quotas, t, measure(quotas), ())
            fits.append(same)
            logger.info("latency: allocated for a predicted %.3f, measured %.3f of the original", t, same.measured)
        r = same.measured
        history.append((t, r))
        if target * (1 - CLOSE) <= r <= target:
            break
        steps = [(pt, pr) for pt, pr in history if abs(pr - r) > 1e-3]
        slope = (t - steps[-1][0]) / (r - steps[-1][1]) if steps else 0.0
        nxt = t + slope * (aim - r) if slope > 0 else t * aim / max(r, 1e-9)
        if abs(nxt - t) < 1e-4:
            nxt = t * aim / max(r, 1e-9)  # stuck on a flat stretch: a proportional step
        t = min(1.0, max(0.005, 0.5 * t, min(2.0 * t, nxt)))  # at most halved or doubled per step
        if any(abs(t - p) < 1e-5 for p, _ in history):
            break
    meeting = [f for f in fits if f.measured <= target]
    best = max(meeting, key=lambda f: f.measured) if meeting else min(fits, key=lambda f: f.measured)
    return Fit(best.quotas, best.predicted, best.measured, tuple(history))


@dataclass(frozen=True)
class Timing:
    """A runtime, the inputs to time at the requested batch, and the original model compiled there."""

    runtime: Runtime
    feed: dict[str, np.ndarray]
    original: Runner
    original_seconds: float

    @classmethod
    def start(cls, runtime: Runtime, model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> Timing:
        run = runtime.load(model)
        return cls(runtime, feed, run, time_one(run, feed, runs=RUNS, min_seconds=0.5))

    def ratio(self, model: onnx.ModelProto) -> float:
        """``model``'s latency over the original's (:func:`onnx_poem.latency.runtimes.time_pairs`)."""
        return time_pairs(self.original, self.runtime.load(model), self.feed, runs=RUNS, min_seconds=SECONDS)
