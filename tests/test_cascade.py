"""Segment-wise streams: the same tensors as running the whole model, whatever the cut order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import BUILDERS, inputs_for
from onnx_poem.calibration.sources import CalibrationData
from onnx_poem.cascade import Stream
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
        got = [dict(b) for b in stream.run(model, wanted, cut)]  # a yielded batch is emptied at the next
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
        got = [dict(b) for b in s.run(model, out, last)]
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
    got = [dict(b) for b in stream.run(model, out, 3)]  # starts over from the inputs, and is right
    for g, f in zip(got, _full(model, data, out), strict=True):
        np.testing.assert_allclose(g[out[0]], f[out[0]], rtol=1e-5, atol=1e-6)


def test_a_batch_is_let_go_before_the_next_run(tmp_path: Path) -> None:
    """The tensors a run yielded for batch k are dropped when the caller asks for batch k + 1, before that batch's
    run: a caller's loop variable does not keep two batches' tensors alive (DenseNet-121: 809 MB per batch)."""
    model = BUILDERS["conv_chain"]()
    view = GraphView.build(model)
    data = CalibrationData({view.inputs[0]: inputs_for(model, 16)})
    stream = Stream(view, data, CHUNKS, tmp_path, "t")
    out = [o.name for o in model.graph.output]
    seen = []
    for batch in stream.run(model, out, 1):
        assert all(not b for b in seen)  # every earlier batch's dict is empty by the time this one arrives
        assert set(batch) == set(out)
        seen.append(batch)
    assert len(seen) == len(CHUNKS) and not seen[-1]
