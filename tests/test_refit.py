"""Refits of the layers that read a residual stream (``coupling.refit``): which layers are refitted, that the
cascade refits them before their block's group, that a saved plan carries them, and where none is made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from models import BUILDERS, inputs_for
from onnx_poem import prune
from onnx_poem.allocation import region_sizes
from onnx_poem.cli import main
from onnx_poem.coupling import find_groups
from onnx_poem.coupling.refit import MARK, reader_refits
from onnx_poem.errors import UsageError
from onnx_poem.graph import GraphView


def _block_conv(model: onnx.ModelProto) -> str:
    """The weight name of the ``residual`` builder's block's first conv (8 → 6 channels, reading the stream)."""
    return next(
        n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[0] != "x" and _rows(model, n) == 6
    )


def _rows(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    return next(numpy_helper.to_array(t).shape[0] for t in model.graph.initializer if t.name == node.input[1])


def _weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_the_layer_that_reads_the_stream_is_its_groups_refit() -> None:
    model = BUILDERS["residual"]()
    view = GraphView.build(model)
    groups = find_groups(view).groups
    refits = reader_refits(view, groups)
    (gid,) = refits
    (r,) = refits[gid]
    g = next(g for g in groups if g.id == gid)
    assert g.channels == 6 and r.consumers[0].node == g.producer and r.id.endswith(MARK + r.consumers[0].label)
    assert r.channels == 8 and int(region_sizes(r).sum()) == 8 and not r.params and not r.producers
    assert reader_refits(view, find_groups(view, residual=True).groups) == {}  # the stream itself pruned: none


def _original_rows(pruned: np.ndarray, original: np.ndarray) -> bool:
    """Every output row of ``pruned`` is one of ``original``'s, unchanged."""
    flat = original.reshape(len(original), -1)
    return all(any(np.array_equal(row, o) for o in flat) for row in pruned.reshape(len(pruned), -1))


@pytest.mark.parametrize(
    ("options", "refitted"),
    [({}, True), ({"refit_readers": False}, False), ({"mode": "parallel"}, False), ({"method": "l1"}, False)],
)
def test_the_cascade_refits_the_reader_before_its_block(options: dict[str, object], refitted: bool) -> None:
    model = BUILDERS["residual"]()
    x = inputs_for(model, 96)
    pruned, rep = prune(model, ratio=0.5, calib={"x": x}, samples=96, allocation="uniform", **options)
    name = _block_conv(model)
    w = _weight(pruned, name)
    assert len(w) == 3  # the block's group lost half its channels either way
    assert _original_rows(w, _weight(model, name)) is not refitted
    assert any(MARK in la.group for la in rep.layers) is refitted


def test_a_saved_plan_carries_the_refits(tmp_path: Path) -> None:
    model = BUILDERS["residual"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 64))
    m, c, plan = str(tmp_path / "m.onnx"), str(tmp_path / "c.npz"), str(tmp_path / "p.json")
    run = CliRunner().invoke(
        main, [m, "--ratio", "0.5", "--calib", c, "-o", str(tmp_path / "a.onnx"), "--save-plan", plan]
    )
    assert run.exit_code == 0, run.output
    assert MARK in (tmp_path / "p.json").read_text()
    run = CliRunner().invoke(main, [m, "--apply-plan", plan, "-o", str(tmp_path / "b.onnx")])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize("value", ["no", 0, None])
def test_refit_readers_takes_only_true_or_false(value: object) -> None:
    """An API option (no CLI flag): a wrong value is one line before any work."""
    model = BUILDERS["residual"]()
    with pytest.raises(UsageError, match=r"^refit_readers must be True or False, got ") as err:
        prune(model, ratio=0.5, calib={"x": inputs_for(model, 16)}, samples=16, refit_readers=value)
    assert "\n" not in str(err.value)
