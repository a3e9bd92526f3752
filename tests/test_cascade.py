"""Segment-wise streams: the same tensors as running the whole model, whatever the cut order."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import models
from models import BUILDERS, inputs_for
from onnx_poem import graph
from onnx_poem.calibration.sources import CalibrationData
from onnx_poem.cascade import OriginalSpan, Stream, cut_position, original_reach, original_spans
from onnx_poem.coupling import find_groups
from onnx_poem.graph import GraphView, with_outputs
from onnx_poem.verify import session

CHUNKS = [np.arange(0, 5), np.arange(5, 12), np.arange(12, 16)]


def _full(model, data: CalibrationData, names: list[str]) -> list[dict[str, np.ndarray]]:
    s = session(with_outputs(model, names))
    return [dict(zip(names, s.run(names, feed), strict=True)) for feed in (next(data.batches(c, 99)) for c in CHUNKS)]


@pytest.mark.parametrize("name", ["conv_chain", "residual", "resnet_option_a", "ffn", "concat", "squeeze_excite"])
@pytest.mark.parametrize("order", ["forward", "backward", "zigzag"])
def test_stream_matches_full_runs_for_any_cut_order(name: str, order: str, tmp_path: Path) -> None:
    model = BUILDERS[name]()
    view = GraphView.build(model)
    data = CalibrationData({view.inputs[0]: inputs_for(model, 16)})
    stream = Stream(view, data, CHUNKS, tmp_path, "t")
    cuts = list(range(len(view.nodes)))
    cuts = {"forward": cuts, "backward": cuts[::-1], "zigzag": [c for i in cuts for c in (i, i // 2)]}[order]
    for cut in cuts:
        wanted = [t for t in view.nodes[cut].output if t] + [o.name for o in model.graph.output]
        got = list(stream.run(model, wanted, cut))
        for g, f in zip(got, _full(model, data, wanted), strict=True):
            for n in wanted:
                np.testing.assert_allclose(g[n], f[n], rtol=1e-5, atol=1e-6)
        # one frontier file per batch is kept: the latest cut's
        assert len(list(tmp_path.iterdir())) == (len(CHUNKS) if stream.frontier else 0)


def test_look_ahead_cut_and_adopted_frontier(tmp_path: Path) -> None:
    model = BUILDERS["conv_chain"]()
    view = GraphView.build(model)
    data = CalibrationData({view.inputs[0]: inputs_for(model, 16)})
    a, b = Stream(view, data, CHUNKS, tmp_path, "a"), Stream(view, data, CHUNKS, tmp_path, "b")
    last = len(view.nodes) - 1
    out = [o.name for o in model.graph.output]
    list(a.run(model, [view.nodes[1].output[0]], 1, cut=last))  # record further on than needed
    assert a.position == last and a.frontier
    b.adopt(a)
    for s in (a, b):
        got = list(s.run(model, out, last))
        for g, f in zip(got, _full(model, data, out), strict=True):
            np.testing.assert_allclose(g[out[0]], f[out[0]], rtol=1e-5, atol=1e-6)


def test_a_run_holds_one_frontier_on_disk(tmp_path: Path) -> None:
    """Each batch of the old frontier is deleted once read: never more than one frontier's files (plus the batch
    being written) on disk during a run, which matters when the frontiers are gigabytes."""
    model = BUILDERS["conv_chain"]()
    view = GraphView.build(model)
    data = CalibrationData({view.inputs[0]: inputs_for(model, 16)})
    stream = Stream(view, data, CHUNKS, tmp_path, "t")
    list(stream.run(model, [], 1))
    assert len(list(tmp_path.iterdir())) == len(CHUNKS)
    for _ in stream.run(model, [], 2):
        assert len(list(tmp_path.iterdir())) == len(CHUNKS)  # batch k written, old batch k already gone
    assert stream.position == 2 and len(list(tmp_path.iterdir())) == len(CHUNKS)


@pytest.mark.parametrize("stop", ["break", "error"])
def test_a_run_stopped_part_way_forgets_its_frontier(stop: str, tmp_path: Path) -> None:
    model = BUILDERS["residual"]()
    view = GraphView.build(model)
    data = CalibrationData({view.inputs[0]: inputs_for(model, 16)})
    stream = Stream(view, data, CHUNKS, tmp_path, "t")
    out = [o.name for o in model.graph.output]
    list(stream.run(model, [], 1))
    run = stream.run(model, out, 2)
    next(run)
    if stop == "break":
        run.close()
    else:
        with pytest.raises(RuntimeError):
            run.throw(RuntimeError("a consumer failed"))
    assert stream.position == 0 and not stream.frontier and not list(tmp_path.iterdir())
    got = list(stream.run(model, out, 3))  # starts over from the inputs, and is right
    for g, f in zip(got, _full(model, data, out), strict=True):
        np.testing.assert_allclose(g[out[0]], f[out[0]], rtol=1e-5, atol=1e-6)


def _walk(model: onnx.ModelProto, groups: list, spans: list, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Walk the original model's stream over ``groups`` along ``spans``, check what each group reads of it against
    full runs, and return how many nodes its segments held in all."""
    view = GraphView.build(model)
    data = CalibrationData({view.inputs[0]: inputs_for(model, 16)})
    tmp.mkdir()
    stream = Stream(view, data, CHUNKS, tmp, "t")
    runs: Counter[str] = Counter()
    real = graph.with_outputs

    def counted(*args: Any, **kwargs: Any) -> onnx.ModelProto:
        seg = real(*args, **kwargs)
        runs.update(n.output[0] for n in seg.graph.node)
        return seg

    monkeypatch.setattr(graph, "with_outputs", counted)
    for g, span in zip(groups, spans, strict=True):
        wanted = list(dict.fromkeys(t for c in g.consumers for t in (c.input, c.output, c.offset) if t))
        got = list(stream.run(model, wanted, span.start, span.next))
        for g_, f in zip(got, _full(model, data, wanted), strict=True):
            for n in wanted:
                np.testing.assert_allclose(g_[n], f[n], rtol=1e-5, atol=1e-6)
    monkeypatch.undo()
    return sum(runs.values())


#: (model, residual groups) where some group's consumer lies after the group's cut, so the spans save segment work
FEWER = {(m, r) for m in ("conv_chain", "projection_block") for r in (False, True)} | {
    (m, True) for m in ("residual", "resnet_option_a", "inverted_residual")
}


@pytest.mark.parametrize(
    "name", ["conv_chain", "residual", "resnet_option_a", "projection_block", "inverted_residual", "ffn", "concat"]
)
@pytest.mark.parametrize("residual", [False, True])
def test_original_stream_along_its_spans(
    name: str, residual: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original model's stream walked along :func:`original_spans` gives each group's consumer inputs, outputs
    and offsets as full runs do, from frontiers that may lie after the group's cut, and runs no more nodes than
    the walk along the groups' cuts (before session 24); fewer where a group's consumer lies after its cut. (A
    frontier too late would still give the tensors, by running from the inputs again: only the count sees it.)"""
    model = getattr(models, name)()
    view = GraphView.build(model)
    groups = sorted(find_groups(view, residual=residual).groups, key=lambda g: cut_position(view, g))
    spans = original_spans(view, groups)
    assert all(cut_position(view, g) <= s.start <= original_reach(view, g) for g, s in zip(groups, spans, strict=True))
    cuts = [cut_position(view, g) for g in groups]
    by_cut = [OriginalSpan(c, n) for c, n in zip(cuts, [*cuts[1:], None], strict=True)]
    along_spans = _walk(model, groups, spans, tmp_path / "spans", monkeypatch)
    along_cuts = _walk(model, groups, by_cut, tmp_path / "cuts", monkeypatch)
    assert along_spans < along_cuts if (name, residual) in FEWER else along_spans == along_cuts


def test_original_spans_never_go_back() -> None:
    """In any group order the starts do not decrease (a later start before the stream's frontier would restart it
    from the inputs) and none lies after its group's reach; each span's ``next`` is the next group's start."""
    view = GraphView.build(models.resnet_option_a())
    groups = sorted(find_groups(view, residual=True).groups, key=lambda g: cut_position(view, g))
    assert len(groups) > 2
    for order in (groups, groups[::-1], groups[1:] + groups[:1]):
        spans = original_spans(view, order)
        starts = [s.start for s in spans]
        assert starts == sorted(starts)
        assert all(s.start <= original_reach(view, g) for g, s in zip(order, spans, strict=True))
        assert [s.next for s in spans] == [*starts[1:], None]
