"""Model inputs that do not hold samples on axis 0: a recurrent state ``[2, batch, H]``, a fixed ``[1, H]``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_poem import prune
from onnx_poem.calibration.sources import load_calibration
from onnx_poem.errors import CalibrationError


def stateful_model() -> onnx.ModelProto:
    """``y = relu(x W1) W2 + sum_0(state) + h`` with x ``[N, 6]``, state ``[2, N, 5]``, h ``[1, 5]``."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 8)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["b"]),
        helper.make_node("ReduceSum", ["state", "axis0"], ["s"], keepdims=0),
        helper.make_node("Add", ["b", "s"], ["c"]),
        helper.make_node("Add", ["c", "h"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "stateful",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 5]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _data(n: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x": rng.standard_normal((n, 6)).astype(np.float32),
        "state": rng.standard_normal((2, n, 5)).astype(np.float32),
        "h": rng.standard_normal((1, 5)).astype(np.float32),
    }


def test_a_state_with_its_batch_on_axis_1_and_a_fixed_input_are_fed_as_declared() -> None:
    model = stateful_model()
    data = load_calibration(model, _data(), samples=64, seed=0)
    assert len(data) == 64 and data.axes == {"state": 1} and set(data.scalars) == {"h"}
    feed = data.feed([3, 5, 7])
    assert feed["x"].shape == (3, 6) and feed["state"].shape == (2, 3, 5) and feed["h"].shape == (1, 5)
    np.testing.assert_array_equal(feed["state"], _data()["state"][:, [3, 5, 7]])
    assert data.sample_shapes() == {"x": (1, 6), "state": (2, 1, 5), "h": (1, 5)}


def test_a_model_with_state_inputs_prunes() -> None:
    pruned, rep = prune(stateful_model(), ratio=0.5, calib=_data(), allocation="uniform")
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.groups[0]["kept"] == 4 and rep.macs_after < rep.macs_before


def test_a_state_with_the_wrong_sample_count_is_one_clear_error() -> None:
    bad = _data() | {"state": np.zeros((2, 63, 5), np.float32)}
    with pytest.raises(CalibrationError, match="same number"):
        load_calibration(stateful_model(), bad, samples=64, seed=0)
