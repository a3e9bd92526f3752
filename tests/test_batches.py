"""Calibration batches sized to the memory one group's tensors take (``pipeline.analyse.sized_batches``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models import BUILDERS, inputs_for, reduce_mean_head
from onnx_poem import prune
from onnx_poem.api import run_family
from onnx_poem.cascade import Stream
from onnx_poem.config import PruneConfig
from onnx_poem.pipeline import analyse as stage
from onnx_poem.pipeline.context import Analysis, RunContext, build_context, load_inputs


def _analysed(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path) -> tuple[RunContext, Analysis]:
    inputs = load_inputs(model, PruneConfig.of(ratio=0.5), x, None, None)
    ctx = build_context(inputs, tmp_path)
    return ctx, stage.analyse(ctx)


def test_a_group_s_bytes_per_sample() -> None:
    """conv(3→8) → relu → conv(8→12, stride 2) on 10 × 10: the first group's consumer reads 8 × 10 × 10 and
    writes 12 × 5 × 5 floats per sample."""
    model = BUILDERS["conv_chain"]()
    from onnx_poem.coupling import find_groups
    from onnx_poem.graph import GraphView

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
