"""The residual stream's error is corrected where a block writes into it (collect.compensated)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from models import attention, inputs_for, inverted_residual
from onnx_poem import prune
from onnx_poem.coupling import find_groups
from onnx_poem.graph import GraphView, with_outputs


def _run(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    m = with_outputs(model, names)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(names, {model.graph.input[0].name: x})


def _rows(t: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` → ``(N·H·W, C)``: one row per position (a 1x1 conv's samples)."""
    return np.moveaxis(t, 1, -1).reshape(-1, t.shape[1]).astype(np.float64)


def test_a_linear_residual_add_is_the_consumers_offset() -> None:
    view = GraphView.build(inverted_residual())
    adds = [n for n in view.model.graph.node if n.op_type == "Add"]
    projections = [c for g in find_groups(view).groups for c in g.consumers if c.kernel == (1, 1)]
    assert len(projections) == 2  # each block's: its output meets the skip in an Add, no activation after
    for c in projections:
        add = next(a for a in adds if c.output in a.input)
        assert c.offset == next(t for t in add.input if t != c.output)
        assert c.activation.kind == "identity" and c.act_out is None


def test_a_sum_that_a_layernorm_reads_gives_no_offset() -> None:
    """Post-LN transformers (``LayerNorm(x + attention(x))``) keep fitting the branch's own output (measured
    better on MiniLM)."""
    view = GraphView.build(attention())
    (g,) = find_groups(view).groups
    (c,) = g.consumers
    (add,) = [n for n in view.model.graph.node if n.op_type == "Add" and c.output in n.input]
    assert "x" in add.input and c.offset is None


def test_the_second_block_fits_the_streams_output_not_its_own() -> None:
    """Least squares (REAP) in the cascade: the second block's projection is fitted so that the Add's output,
    ``W x̂ + ŝ``, matches the original's ``y + s``, which undoes part of the error the first block left in the
    stream ``ŝ``.  Over the calibration samples, the pruned model's stream after the block is within a quarter
    of the gap between the two least-squares fits (of ``y + s − ŝ``, of the block's own output ``y``) from the
    first; fitting ``y`` (as before) lands at the second."""
    model = inverted_residual()
    x = inputs_for(model, 96)
    pruned, _ = prune(model, ratio=0.5, calib=x, method="reap", allocation="uniform", seed=0)
    add = [n for n in model.graph.node if n.op_type == "Add"][-1]
    proj = next(n for n in model.graph.node if n.op_type == "Conv" and n.output[0] in add.input)
    y_name, s_name = proj.output[0], next(t for t in add.input if t != proj.output[0])
    y, s, z = _run(model, [y_name, s_name, add.output[0]], x)
    xh, sh, zh = _run(pruned, [proj.input[0], s_name, add.output[0]], x)
    assert xh.shape[1] < 12 and not np.allclose(sh, s, atol=1e-4)  # pruned, and the stream carries an error
    X = np.hstack([_rows(xh), np.ones((len(_rows(xh)), 1))])

    def stream_error(W: np.ndarray) -> float:
        return float(np.sum((X @ W + _rows(sh) - _rows(z)) ** 2))

    best = stream_error(np.linalg.lstsq(X, _rows(z) - _rows(sh), rcond=None)[0])
    own = stream_error(np.linalg.lstsq(X, _rows(y), rcond=None)[0])
    err = float(np.sum((_rows(zh) - _rows(z)) ** 2))
    assert best < own and err - best < 0.25 * (own - best)
