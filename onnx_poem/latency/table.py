"""Per-layer latency tables measured on a runtime, and the latency they predict for an allocation.

Measured, not modelled from MACs: every node of the model is compiled alone
(its constants as initializers, its other inputs as graph inputs of the shapes
the model has at ``--batch``) and timed on the runtime, once at full width and
then, for every group, at the channel counts ``region_keeps(g, r, step)`` for
``r`` in :data:`LEVELS` with that group alone pruned (the nodes whose tensors
change: its producers, the per-channel ops, its consumers).  The predicted
latency of an allocation ``k`` is

    L(k) / L(full) = Σ_n t_n · Π_{g touching n} ρ_{n,g}(k_g)  /  Σ_n t_n

with ``t_n`` node ``n``'s time at full width and ``ρ_{n,g}(k) = t_n(g at k) / t_n``
interpolated linearly in ``k`` between the measured counts (a conv whose input
and output groups are both pruned scales with both factors, as its MACs do).
Node times do not add up to the model's (onnxruntime fuses a conv with its
activation, overlaps nothing on one stream): the budget is therefore closed by
measuring the whole model at the chosen widths (:mod:`onnx_poem.latency.budget`).

The channel step the table is measured in (``--round-to`` when not given) comes
from whole-model timings (:func:`onnx_poem.latency.budget.probe_step`): nodes
timed alone do not show what unaligned counts cost inside a model (onnxruntime
CPU then drops its blocked NCHWc convolutions and reorders between layouts).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..allocation import region_keeps
from ..coupling import ChannelGroup
from ..graph import GraphView, infer_shapes
from .runtimes import Runtime, time_one
from .widths import width_model

logger = logging.getLogger(__name__)

#: fractions of a group removed at which its nodes are timed (PRO removes at most 0.9)
LEVELS = (0.2, 0.4, 0.6, 0.8, 0.9)

Progress = Callable[[int, int, str], None]
Shapes = dict[str, tuple[int | None, ...]]


@dataclass(frozen=True)
class LatencyTable:
    """Node times at full width and per group at fewer channels (see the module docstring).

    Attributes:
        runtime: the runtime's name (``ort-cpu:2``, ...); batch: the batch size timed.
        step: the channel step the allocation moves in.
        base: node key (its first output) → seconds at full width, for every node that could be timed alone.
        curves: group id → node key → ``(counts, seconds)``: the node's time with the group at those counts.
        channels: group id → its atoms.
        probe: the step probe: whole-model latency over the original's, aligned (``"0"``) and with ``d``
            fewer channels in every group (``"1"``, ``"2"``, ``"4"``).
        seconds: time spent measuring (0 when read from the cache).
    """

    runtime: str
    batch: int
    step: int
    base: dict[str, float]
    curves: dict[str, dict[str, tuple[tuple[int, ...], tuple[float, ...]]]]
    channels: dict[str, int]
    probe: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def factor(self, gid: str, node: str, kept: float) -> float:
        """``ρ_{node,g}(kept)``: the node's time with ``kept`` atoms of ``g`` over its full-width time."""
        return float(self.factors(gid, node)[int(kept)])

    def factors(self, gid: str, node: str) -> np.ndarray:
        """``ρ_{node,g}(k)`` for ``k = 0 … C_g``: measured, made non-decreasing in ``k`` (a count never costs
        more than a larger one: timing noise is not a reason to keep channels), interpolated linearly and
        clamped below the smallest count measured; plus ``1e-3·k/C`` so that no move saves nothing."""
        counts, secs = self.curves[gid][node]
        xs = np.asarray([*counts, self.channels[gid]], dtype=np.float64)
        ys = np.asarray([s / self.base[node] for s in secs] + [1.0])
        order = np.argsort(-xs)
        xs, ys = xs[order][::-1], np.minimum.accumulate(ys[order])[::-1]
        k = np.arange(self.channels[gid] + 1, dtype=np.float64)
        return np.interp(k, xs, ys) + 1e-3 * (k / self.channels[gid] - 1.0)

    def touching(self) -> dict[str, list[str]]:
        """Node key → the groups whose pruning changes it (in table order)."""
        out: dict[str, list[str]] = {}
        for gid, nodes in self.curves.items():
            for n in nodes:
                out.setdefault(n, []).append(gid)
        return out

    def predict(self, keeps: Mapping[str, int]) -> float:
        """Predicted latency of the allocation ``keeps`` (atoms per group) as a fraction of the original's."""
        total = sum(self.base.values()) or 1.0
        kept = total
        for node, gids in self.touching().items():
            f = math.prod(self.factor(g, node, keeps.get(g, self.channels[g])) for g in gids)
            kept -= self.base[node] * (1.0 - f)
        return kept / total

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "batch": self.batch,
            "step": self.step,
            "base": self.base,
            "curves": {g: {n: [list(c), list(s)] for n, (c, s) in v.items()} for g, v in self.curves.items()},
            "channels": self.channels,
            "probe": self.probe,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LatencyTable:
        return cls(
            runtime=str(d["runtime"]),
            batch=int(d["batch"]),
            step=int(d["step"]),
            base={str(k): float(v) for k, v in d["base"].items()},
            curves={
                g: {n: (tuple(int(x) for x in c), tuple(float(x) for x in s)) for n, (c, s) in v.items()}
                for g, v in d["curves"].items()
            },
            channels={str(k): int(v) for k, v in d["channels"].items()},
            probe={str(k): float(v) for k, v in d.get("probe", {}).items()},
            seconds=float(d.get("seconds", 0.0)),
        )


def measure_table(
    view: GraphView,
    groups: Mapping[str, ChannelGroup],
    free: Sequence[ChannelGroup],
    feed: Mapping[str, np.ndarray],
    runtime: Runtime,
    step: int,
    probe: Mapping[str, float],
    progress: Progress | None = None,
) -> LatencyTable:
    """Time every node of ``view.model`` alone at full width and with each free group pruned to the
    :data:`LEVELS` in multiples of ``step`` (``probe``: how the step was chosen, kept in the table).
    ``feed``: the model's inputs at the batch size to time."""
    import time

    t0 = time.perf_counter()
    shapes_of = {k: tuple(v.shape) for k, v in feed.items()}
    timer = _NodeTimer(runtime)
    shapes0, types0 = infer_shapes(view.model, shapes_of)
    base: dict[str, float] = {}
    for node in view.model.graph.node:
        t = timer.time(view.model, node, shapes0, types0)
        if t is not None:
            base[node.output[0]] = t

    def group_times(g: ChannelGroup, quota: np.ndarray) -> dict[str, float]:
        m = width_model(view, groups, {g.id: quota})
        shapes, types = infer_shapes(m, shapes_of)
        out = {}
        for node in m.graph.node:
            key = node.output[0]
            if key in base and any(shapes.get(t) != shapes0.get(t) for t in [*node.input, *node.output] if t):
                t = timer.time(m, node, shapes, types)
                if t is not None:
                    out[key] = t
        return out

    curves: dict[str, dict[str, tuple[tuple[int, ...], tuple[float, ...]]]] = {}
    for i, g in enumerate(free):
        if progress:
            progress(i, len(free), f"latency {g.id}")
        points: dict[str, list[tuple[int, float]]] = {}
        seen = {g.channels}
        for r in LEVELS:
            quota = region_keeps(g, r, step)
            k = int(quota.sum())
            if k in seen:
                continue
            seen.add(k)
            for node, t in group_times(g, quota).items():
                points.setdefault(node, []).append((k, t))
        curves[g.id] = {n: (tuple(k for k, _ in p), tuple(t for _, t in p)) for n, p in points.items()}
    if progress:
        progress(len(free), len(free), "")
    return LatencyTable(
        runtime=runtime.name,
        batch=next(iter(shapes_of.values()))[0] if shapes_of else 1,
        step=step,
        base=base,
        curves=curves,
        channels={g.id: g.channels for g in free},
        probe=dict(probe),
        seconds=time.perf_counter() - t0,
    )


class _NodeTimer:
    """Times one node alone on a runtime (``None`` when it cannot run alone: subgraphs, computed integer
    inputs such as shapes, unknown shapes)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.model: onnx.ModelProto | None = None
        self.consts: dict[str, onnx.TensorProto] = {}

    def time(
        self, model: onnx.ModelProto, node: onnx.NodeProto, shapes: Mapping[str, Any], types: Mapping[str, Any]
    ) -> float | None:
        if node.op_type == "Constant" or any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            return None
        if model is not self.model:
            self.model, self.consts = model, constants(model)
        consts = self.consts
        inits, inputs, feed = [], [], {}
        for name in dict.fromkeys(t for t in node.input if t):
            if name in consts:
                inits.append(consts[name])
                continue
            shape, dtype = shapes.get(name), types.get(name)
            if shape is None or dtype is None or any(d is None for d in shape) or dtype.kind != "f":
                return None
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape))
            feed[name] = np.full(shape, 0.5, dtype=dtype)
        outputs = []
        for name in (t for t in node.output if t):
            if types.get(name) is None:
                return None
            outputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(types[name]), None))
        graph = helper.make_graph([node], "node", inputs, outputs, initializer=inits)
        alone = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
        try:
            return time_one(self.runtime.load(alone), feed)
        except Exception as e:  # a node that does not run alone keeps its time out of the table
            logger.debug("latency of %s not measured alone: %s", node.output[0], e)
            return None


def constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and ``Constant``-node values of ``model`` by name."""
    out = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            out[t.name] = t
    return out


def load_cached(path: Path) -> LatencyTable | None:
    """The table cached at ``path``, ``None`` when there is none or it cannot be read."""
    try:
        return LatencyTable.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
