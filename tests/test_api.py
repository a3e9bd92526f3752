"""prune() on the test graphs: every method, validity, determinism, the report."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import BUILDERS, inputs_for
from onnx_poem import CalibrationError, ModelError, UsageError, prune
from onnx_poem.solvers import METHODS


def _out(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {model.graph.input[0].name: x})[0]


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_valid_smaller_model(name: str, method: str) -> None:
    model = BUILDERS[name]()
    x = inputs_for(model, 48)
    pruned, rep = prune(
        model, ratio=0.5, calib=x, method=method, positions=8, prune_residual=True, allocation="uniform"
    )
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.macs_after < rep.macs_before
    assert _out(pruned, x[:4]).shape == _out(model, x[:4]).shape
    assert all(g["kept"] == max(1, round(0.5 * g["channels"])) for g in rep.groups)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_pro_allocation_gives_a_valid_model_at_the_uniform_budget(name: str) -> None:
    model = BUILDERS[name]()
    x = inputs_for(model, 48)
    runs = {}
    for allocation in ("uniform", "pro"):
        pruned, rep = prune(model, ratio=0.5, calib=x, positions=8, prune_residual=True, allocation=allocation)
        onnx.checker.check_model(pruned, full_check=True)
        assert _out(pruned, x[:4]).shape == _out(model, x[:4]).shape
        runs[allocation] = rep
    if runs["uniform"].macs_after < runs["uniform"].macs_before:
        assert runs["pro"].macs_after < runs["pro"].macs_before
        assert runs["pro"].macs_ratio <= runs["uniform"].macs_ratio + 0.05  # counts, not shapes, are predicted


def test_input_model_is_not_modified() -> None:
    model = BUILDERS["conv_chain"]()
    before = model.SerializeToString()
    prune(model, ratio=0.5, calib=inputs_for(model, 32))
    assert model.SerializeToString() == before


@pytest.mark.parametrize("mode", ["cascade", "parallel"])
def test_same_inputs_and_seed_give_identical_bytes(mode: str) -> None:
    model = BUILDERS["conv_bn_after"]()
    x = inputs_for(model, 40)
    a, _ = prune(model, ratio=0.5, calib=x, seed=3, mode=mode)
    b, _ = prune(model, ratio=0.5, calib=x, seed=3, mode=mode)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_reconstruction_beats_no_reconstruction() -> None:
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 64)
    _, rep = prune(model, ratio=0.5, calib=x, method="reap", positions=16)
    for layer in rep.layers:
        assert layer.errors["pre_ls"] <= layer.errors["pre_none"] + 1e-9


def test_report_is_json_and_complete() -> None:
    import json

    model = BUILDERS["residual"]()
    _, rep = prune(model, ratio=0.3, calib=inputs_for(model, 32))
    d = json.loads(rep.to_json())
    assert d["unprunable"] and d["layers"] and 0 < d["macs_ratio"] < 1
    for key in ("pre_none", "pre_ls", "pre_chosen", "post_none", "post_ls", "post_chosen"):
        assert key in d["layers"][0]["errors"]
    macs_line = next(ln for ln in rep.summary().splitlines() if ln.startswith("MACs"))
    assert macs_line.split()[1:] == [f"{rep.macs_before:,}", f"{rep.macs_after:,}", f"{rep.macs_ratio:.3f}"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ratio": 1.0}, UsageError),
        ({"ratio": -0.1}, UsageError),
        ({"ratio": 0.5, "method": "magic"}, UsageError),
        ({"ratio": 0.5, "samples": 0}, UsageError),
        ({"ratio": 0.5, "allocation": "greedy"}, UsageError),
        ({"ratio": 0.5, "round_to": 0}, UsageError),
        ({"ratio": 0.5, "seed": -1, "calib": np.zeros((4, 3, 10, 10), np.float32)}, UsageError),
        ({"ratio": 0.5}, UsageError),  # no calibration data and no synthetic=True
        ({"ratio": 0.5, "calib": np.zeros((4, 3, 9, 10), np.float32)}, CalibrationError),
        ({"ratio": 0.5, "calib": np.zeros((4, 3, 10, 10), np.float64)}, CalibrationError),
        ({"ratio": 0.5, "calib": np.full((4, 3, 10, 10), np.nan, np.float32)}, CalibrationError),
        ({"ratio": 0.5, "calib": np.zeros((4, 10, 10), np.float32)}, CalibrationError),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    model = BUILDERS["conv_chain"]()
    with pytest.raises(error):
        prune(model, **kwargs)


def test_a_single_input_model_takes_one_array_of_any_name() -> None:
    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 16)
    a, _ = prune(model, ratio=0.5, calib={"wrong": x}, method="reap")
    b, _ = prune(model, ratio=0.5, calib={"x": x}, method="reap")
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_bad_model_path(tmp_path) -> None:
    with pytest.raises(ModelError):
        prune(tmp_path / "missing.onnx", ratio=0.5)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelError):
        prune(bad, ratio=0.5)


def test_no_calibration_data_is_refused_unless_synthetic_is_asked_for(caplog) -> None:
    model = BUILDERS["conv_chain"]()
    with pytest.raises(UsageError, match=r"--calib .*--synthetic"):
        prune(model, ratio=0.5, samples=16)
    _, rep = prune(model, ratio=0.5, samples=16, synthetic=True)
    assert rep.synthetic_calibration
    assert "synthetic" in caplog.text
    assert "says little about real data" in rep.summary()
    assert not rep.verification["trusted"]


@pytest.mark.parametrize("target", [0.8, 0.5])
def test_macs_target_is_reached(target: float) -> None:
    model = BUILDERS["resnet_option_a"]()
    x = inputs_for(model, 32)
    _, rep = prune(model, target_macs=target, calib=x, method="l2", prune_residual=True)
    assert rep.target_macs == target and rep.ratio > 0
    assert rep.macs_ratio <= target + 0.08  # predicted from kept fractions, measured exactly


def test_ratio_and_target_are_exclusive() -> None:
    model = BUILDERS["conv_chain"]()
    with pytest.raises(UsageError):
        prune(model, ratio=0.5, target_macs=0.5)
    with pytest.raises(UsageError):
        prune(model)


def test_model_exported_for_a_fixed_batch_of_one() -> None:
    from models import reduce_mean_head

    model = reduce_mean_head(batch=1)
    x = inputs_for(model, 24)
    pruned, rep = prune(model, ratio=0.5, calib=x)
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.macs_after < rep.macs_before


def test_logits_layer_with_fewer_samples_than_inputs_is_left_unpruned() -> None:
    from models import _B

    b = _B(0)  # conv(3→40) → relu → global pool → flatten → gemm(40→5) = logits: 41 inputs, one sample per image
    t = b.node("GlobalAveragePool", [b.node("Relu", [b.conv("x", 3, 40)])])
    model = b.model([("x", ["N", 3, 6, 6])], [b.gemm(b.node("Flatten", [t], axis=1), 40, 5)])
    _, rep = prune(model, ratio=0.5, calib=inputs_for(model, 24))
    assert any("under-determined" in u["reason"] for u in rep.unprunable)
    assert all(g["kept"] == g["channels"] for g in rep.groups)
    _, rep = prune(model, ratio=0.5, calib=inputs_for(model, 200))
    assert not any("under-determined" in u["reason"] for u in rep.unprunable)
    assert all(g["kept"] < g["channels"] for g in rep.groups)
