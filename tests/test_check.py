"""The full ONNX check of the tool's models (onnx_poem.graph.check_model), in memory and from a file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_poem.graph as graph
from models import BUILDERS
from onnx_poem.errors import ModelError


def _matmul(rows: int = 256) -> onnx.ModelProto:
    """``y = x W`` with a ``(rows, 64)`` float weight."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(params=["memory", "file"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both routes of the check: in memory, and (every model counted large) from a file with external data."""
    if request.param == "file":
        monkeypatch.setattr(graph, "CHECK_FROM_FILE_BYTES", 0)
        calls: list[onnx.ModelProto] = []
        real = graph._check_from_file
        monkeypatch.setattr(graph, "_check_from_file", lambda m: (calls.append(m), real(m)))
        request.node.calls = calls
    return str(request.param)


def test_valid_models_pass_either_route(route: str, request: pytest.FixtureRequest) -> None:
    for name in ("conv_chain", "residual"):
        graph.check_model(BUILDERS[name](), what="model", error=ModelError)
    graph.check_model(_matmul(), what="model", error=ModelError)
    if route == "file":
        assert len(request.node.calls) == 3  # the file route was taken


def test_wrong_weight_size_fails_either_route(route: str) -> None:
    m = _matmul()
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]
    with pytest.raises(ModelError, match="fails the ONNX checker"):
        graph.check_model(m, what="model", error=ModelError)


def test_bad_structure_and_bad_shapes_fail_either_route(route: str) -> None:
    m = _matmul()
    m.graph.node[0].input[1] = "missing"
    with pytest.raises(ModelError, match="fails the ONNX checker"):
        graph.check_model(m, what="model", error=ModelError)
    m = _matmul()
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 65  # shape inference says 64
    with pytest.raises(ModelError, match="fails the ONNX checker"):
        graph.check_model(m, what="model", error=ModelError)


def test_file_route_leaves_nothing_behind(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(graph, "CHECK_FROM_FILE_BYTES", 0)
    graph.check_model(_matmul(), what="model", error=ModelError)
    assert list(tmp_path.iterdir()) == []
