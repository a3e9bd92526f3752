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


@pytest.mark.parametrize("where", ["initializer", "constant"])
def test_a_model_referring_to_external_data_is_checked_in_memory(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller's model that still refers to external data (in an initializer or a ``Constant`` node's value) is
    checked in memory as before (where the checker looks for the data relative to the working directory), not
    from a temporary folder, and gets what onnx's own check says."""
    monkeypatch.setattr(graph, "CHECK_FROM_FILE_BYTES", 0)
    m = _matmul()
    value = numpy_helper.from_array(np.ones(4, dtype=np.float32), "unused")
    if where == "initializer":
        m.graph.initializer.append(value)
        ext = m.graph.initializer[-1]
    else:
        m.graph.node.append(helper.make_node("Constant", [], ["unused"], value=value))
        ext = m.graph.node[-1].attribute[0].t
    ext.ClearField("raw_data")
    ext.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", "16")):
        e = ext.external_data.add()
        e.key, e.value = k, v
    monkeypatch.setattr(graph, "_check_from_file", lambda m: pytest.fail("checked from a temporary file"))
    with pytest.raises(onnx.checker.ValidationError) as own:  # onnx itself, in memory: no such file here
        onnx.checker.check_model(m, full_check=True)
    with pytest.raises(ModelError) as ours:
        graph.check_model(m, what="model", error=ModelError)
    assert str(own.value).strip().splitlines()[0] in str(ours.value)


def test_no_room_for_the_file_falls_back_to_the_check_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary folder that cannot take the copy is not the model's fault: the checker reads the model from
    memory instead, and a bad model still fails."""
    from onnx_poem.errors import OutputError

    def full(files, *, force):
        raise OutputError("cannot write the outputs: [Errno 28] No space left on device")

    monkeypatch.setattr(graph, "CHECK_FROM_FILE_BYTES", 0)
    monkeypatch.setattr(graph, "write_together", full)
    graph.check_model(_matmul(), what="model", error=ModelError)
    m = _matmul()
    m.graph.node[0].input[1] = "missing"
    with pytest.raises(ModelError, match="fails the ONNX checker") as e:
        graph.check_model(m, what="model", error=ModelError)
    assert "No space" not in str(e.value)
