"""Channel-last flattens (tf2onnx's Keras ``Flatten``): read channel-first, then pruned through."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models import inputs_for, keras_flatten
from onnx_poem import prune
from onnx_poem.coupling import find_groups
from onnx_poem.flatten import flatten_channels_first
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView

VARIANTS = [
    {"flatten": "Reshape", "dense": "MatMul"},
    {"flatten": "Flatten", "dense": "MatMul"},
    {"flatten": "Reshape", "dense": "Gemm"},
    {"flatten": "Flatten", "dense": "Gemm", "one_d": True},
    {"flatten": "Reshape", "dense": "MatMul", "one_d": True},
]


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _dense(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type in ("MatMul", "Gemm"))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_the_flatten_reads_channel_first_with_the_same_outputs(variant: dict[str, object]) -> None:
    model = keras_flatten(**variant)  # type: ignore[arg-type]
    folded = fold_constants(model)
    onnx.checker.check_model(folded, full_check=True)
    assert "Transpose" not in [n.op_type for n in folded.graph.node]
    x = inputs_for(model, 8)
    for a, b in zip(_run(model, x), _run(folded, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # and the conv's channels now reach the dense layer: one group from the conv to it
    view = GraphView.build(folded)
    coupling = find_groups(view)
    conv = next(i for i, n in enumerate(folded.graph.node) if n.op_type == "Conv")
    dense = next(i for i, n in enumerate(folded.graph.node) if n.op_type in ("MatMul", "Gemm"))
    group = next(g for g in coupling.groups if conv in g.producers)
    assert [c.node for c in group.consumers] == [dense]


def test_without_the_rewrite_the_analysis_stops_at_the_flatten() -> None:
    """The check above would pass vacuously if the tracer followed channel-last flattens on its own."""
    model = keras_flatten()
    view = GraphView.build(model)
    coupling = find_groups(view)
    conv = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Conv")
    assert not any(conv in g.producers for g in coupling.groups)


def test_a_transpose_read_elsewhere_stays_and_the_outputs_hold() -> None:
    model = keras_flatten(shared="transpose")
    folded = flatten_channels_first(model)
    assert folded is not model
    assert [n.op_type for n in folded.graph.node].count("Transpose") == 1
    x = inputs_for(model, 8)
    for a, b in zip(_run(model, x), _run(folded, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_a_dense_weight_read_elsewhere_is_left_as_it_is() -> None:
    model = keras_flatten(shared="weight")
    assert flatten_channels_first(model) is model


def test_the_input_model_is_not_modified() -> None:
    model = keras_flatten()
    before = model.SerializeToString()
    flatten_channels_first(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("dense", ["MatMul", "Gemm"])
def test_a_dead_channel_is_removed_with_its_dense_rows(dense: str) -> None:
    """Channel 2 of the conv never fires (zero weights, negative bias): pruning one channel of six removes it
    and the model's outputs stay as they were, which fails if the dense rows sliced are not that channel's."""
    model = keras_flatten(dense=dense, head=False)  # the dense layer writes the output: only the conv is pruned
    inits = {t.name: t for t in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    w, b = (numpy_helper.to_array(inits[t]).copy() for t in conv.input[1:3])
    w[2], b[2] = 0.0, -1.0
    for name, arr in zip(conv.input[1:3], (w, b), strict=True):
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    x = inputs_for(model, 256)  # a consumer that writes a graph output needs more fitting samples than inputs
    pruned, rep = prune(model, ratio=1 / 6, calib=x, method="l1", allocation="uniform")
    onnx.checker.check_model(pruned, full_check=True)
    assert [(g["channels"], g["kept"]) for g in rep.groups] == [(6, 5)]
    weight = {t.name: t for t in pruned.graph.initializer}[_dense(pruned).input[1]]
    assert 80 in weight.dims  # 5 channels x 16 positions
    y = inputs_for(model, 16, seed=1)
    np.testing.assert_allclose(_run(pruned, y)[0], _run(model, y)[0], rtol=1e-4, atol=1e-5)
