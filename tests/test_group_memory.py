"""What one group's collection holds: batches sized to its tensors (``pipeline.analyse.sized_batches``), reservoirs
to a byte budget (``calibration.collect.reservoir_caps``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models import BUILDERS, inputs_for, reduce_mean_head
from onnx_poem import prune
from onnx_poem.api import run_family
from onnx_poem.calibration import collect as collect_mod
from onnx_poem.calibration.stats import LayerStats
from onnx_poem.cascade import Stream
from onnx_poem.config import PruneConfig
from onnx_poem.coupling import ChannelGroup, Consumer, find_groups
from onnx_poem.graph import GraphView
from onnx_poem.pipeline import analyse as stage
from onnx_poem.pipeline.context import Analysis, RunContext, build_context, load_inputs
from onnx_poem.weights import effective


def _analysed(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path) -> tuple[RunContext, Analysis]:
    inputs = load_inputs(model, PruneConfig.of(ratio=0.5), x, None, None)
    ctx = build_context(inputs, tmp_path)
    return ctx, stage.analyse(ctx)


def test_a_group_s_bytes_per_sample() -> None:
    """conv(3→8) → relu → conv(8→12, stride 2) on 10 × 10: the first group's consumer reads 8 × 10 × 10 and
    writes 12 × 5 × 5 floats per sample."""
    model = BUILDERS["conv_chain"]()
    view = GraphView.build(model)
    first = find_groups(view, residual=False).groups[0]
    assert stage._sample_bytes(view, first) == 4 * (8 * 10 * 10 + 12 * 5 * 5)


def test_batches_shrink_to_the_byte_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = BUILDERS["concat"]()
    ctx, analysis = _analysed(model, inputs_for(model, 40), tmp_path)
    per = max(stage._sample_bytes(ctx.view, g) for g in analysis.free)
    assert stage.sized_batches(ctx, analysis) is ctx  # a small model keeps --batch-size
    monkeypatch.setattr(stage, "BATCH_BYTES", 3 * per + 1)
    small = stage.sized_batches(ctx, analysis)
    assert small.cfg.batch_size == 3 and max(len(c) for c in small.chunks) == 3
    # the same samples in the same order: the fitting ones first, then the selection ones
    np.testing.assert_array_equal(np.concatenate(small.chunks), np.concatenate(ctx.chunks))
    assert all(np.isin(c, ctx.split.fit).all() or np.isin(c, ctx.split.select).all() for c in small.chunks)
    monkeypatch.setattr(stage, "BATCH_BYTES", 1)
    assert stage.sized_batches(ctx, analysis).cfg.batch_size == 1


def test_a_model_with_a_fixed_batch_keeps_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = reduce_mean_head(batch=4)
    ctx, analysis = _analysed(model, inputs_for(model, 24), tmp_path)
    assert ctx.cfg.batch_size == 4
    monkeypatch.setattr(stage, "BATCH_BYTES", 1)
    assert stage.sized_batches(ctx, analysis) is ctx


@pytest.mark.parametrize("how", ["uniform", "pro", "residual auto", "family"])
def test_a_prune_runs_its_streams_in_the_sized_batches(
    how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = BUILDERS["concat"]()
    x = inputs_for(model, 40)
    ctx, analysis = _analysed(model, x, tmp_path)
    per = max(stage._sample_bytes(ctx.view, g) for g in analysis.free)
    monkeypatch.setattr(stage, "BATCH_BYTES", 3 * per + 1)
    sizes: list[int] = []
    init = Stream.__init__

    def spy(self: Stream, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        sizes.append(max(len(c) for c in self.chunks))

    monkeypatch.setattr(Stream, "__init__", spy)
    if how == "family":
        results = run_family(model, [0.3, 0.5], calib=x)
        models = [(r.model, r.report) for r in results]
    else:
        options = {"residual": "auto"} if how == "residual auto" else {"allocation": how}
        models = [prune(model, ratio=0.5, calib=x, **options)]
    for pruned, rep in models:
        assert pruned is not None
        onnx.checker.check_model(pruned, full_check=True)
        assert rep.macs_after < rep.macs_before
    assert sizes and max(sizes) == 3


def _stream_group(tmp_path: Path) -> tuple[GraphView, ChannelGroup, list[np.ndarray]]:
    """The residual builder's stream group (``--residual stream``): two consumers, a conv and the classifier."""
    view = GraphView.build(BUILDERS["residual"]())
    g = next(g for g in find_groups(view, residual=True).groups if len(g.consumers) == 2)
    return view, g, [effective(view, c)[0] for c in g.consumers]


def _bytes(consumers: list[Consumer], W0s: list[np.ndarray], caps: list[tuple[int, int]]) -> int:
    """Bytes of the reservoirs at ``caps`` (fitting rows: inputs, targets, shortcut; held-out: outputs too)."""
    out = 0
    for c, W0, (f, h) in zip(consumers, W0s, caps, strict=True):
        m, n, s = W0.shape[0], W0.shape[1] - 1, W0.shape[0] if c.offset else 0
        out += 4 * (f * (n + m + s) + h * (n + 2 * m + s))
    return out


def test_a_group_s_reservoirs_keep_to_the_byte_budget(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    view, g, W0s = _stream_group(tmp_path)
    cfg = PruneConfig.of(ratio=0.5, reservoir=1000)
    full = collect_mod.reservoir_caps(view, g, W0s, 300, 400, cfg)
    pers = [collect_mod._rows_per_sample(view, c, cfg.positions) or 0 for c in g.consumers]
    # --reservoir rows (half of them held out), or what the samples give: the conv's 64 positions per sample, the
    # classifier's one
    assert full == [(min(1000, 300 * p), min(500, 100 * p)) for p in pers] == [(1000, 500), (300, 100)]
    widest = max(_bytes([c], [W0], [cap]) for c, W0, cap in zip(g.consumers, W0s, full, strict=True))
    total = _bytes(g.consumers, W0s, full)
    assert widest < total
    monkeypatch.setattr(collect_mod, "GROUP_RESERVOIR_BYTES", total)
    assert collect_mod.reservoir_caps(view, g, W0s, 300, 400, cfg) == full  # at the budget: as they were
    one_row = _bytes(g.consumers, W0s, [(1, 1)] * len(W0s))
    budget = (widest + total) // 2
    monkeypatch.setattr(collect_mod, "GROUP_RESERVOIR_BYTES", budget)
    scaled = collect_mod.reservoir_caps(view, g, W0s, 300, 400, cfg)
    assert budget - one_row <= _bytes(g.consumers, W0s, scaled) <= budget  # rows rounded down
    assert all(f < f0 and h < h0 for (f, h), (f0, h0) in zip(scaled, full, strict=True))
    ratios = [r for (f, h), (f0, h0) in zip(scaled, full, strict=True) for r in (f / f0, h / h0)]
    assert max(ratios) - min(ratios) < 0.02  # one factor for every consumer (each rounded down)
    monkeypatch.setattr(collect_mod, "GROUP_RESERVOIR_BYTES", 1)
    assert _bytes(g.consumers, W0s, collect_mod.reservoir_caps(view, g, W0s, 300, 400, cfg)) <= widest  # the widest's


def test_a_group_of_one_consumer_keeps_its_reservoir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    view = GraphView.build(BUILDERS["conv_chain"]())
    g = find_groups(view, residual=False).groups[0]
    W0s = [effective(view, c)[0] for c in g.consumers]
    cfg = PruneConfig.of(ratio=0.5, reservoir=1000)
    monkeypatch.setattr(collect_mod, "GROUP_RESERVOIR_BYTES", 1)
    assert collect_mod.reservoir_caps(view, g, W0s, 300, 400, cfg) == [(1000, 500)]
    # fewer samples than the cap: what they give (positions per sample times samples)
    per = collect_mod._rows_per_sample(view, g.consumers[0], cfg.positions)
    assert per is not None
    assert collect_mod.reservoir_caps(view, g, W0s, 3, 4, cfg) == [(min(1000, 3 * per), min(500, per))]


def test_a_prune_collects_into_the_budgeted_reservoirs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = BUILDERS["residual"]()
    x = inputs_for(model, 40)
    made: list[tuple[int, int]] = []
    empty = LayerStats.empty

    def spy(n1: int, m: int, *, capacity: int, held_capacity: int, seed: int) -> LayerStats:
        made.append((capacity, held_capacity))
        return empty(n1, m, capacity=capacity, held_capacity=held_capacity, seed=seed)

    monkeypatch.setattr(LayerStats, "empty", spy)
    runs = []
    for budget in (collect_mod.GROUP_RESERVOIR_BYTES, 1):
        monkeypatch.setattr(collect_mod, "GROUP_RESERVOIR_BYTES", budget)
        made.clear()
        pruned, rep = prune(model, ratio=0.5, calib=x, residual="stream", allocation="uniform")
        onnx.checker.check_model(pruned, full_check=True)
        assert rep.macs_after < rep.macs_before
        runs.append(list(made))
    assert len(runs[0]) == len(runs[1])
    assert all(f1 <= f0 and h1 <= h0 for (f0, h0), (f1, h1) in zip(*runs, strict=True))
    assert any(f1 < f0 for (f0, _), (f1, _) in zip(*runs, strict=True))  # the stream group's two consumers
