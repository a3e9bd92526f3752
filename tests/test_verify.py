"""The verification split and what the report says about agreement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from models import BUILDERS, inputs_for
from onnx_poem import prune
from onnx_poem.calibration.split import VERIFY_MAX, split_samples
from onnx_poem.cli import main
from onnx_poem.verify import mean_interval, wilson


@given(st.integers(1, 5000), st.integers(0, 2**31), st.booleans())
@settings(max_examples=200, deadline=None)
def test_split_is_a_disjoint_cover_with_a_fit_sample(n: int, seed: int, verify: bool) -> None:
    s = split_samples(n, seed=seed, verify=verify)
    every = np.concatenate([s.fit, s.select, s.verify])
    assert np.array_equal(np.sort(every), np.arange(n))
    assert len(s.fit) >= 1 and len(s.verify) <= VERIFY_MAX
    assert verify or len(s.verify) == 0
    again = split_samples(n, seed=seed, verify=verify)
    assert all(
        np.array_equal(a, b)
        for a, b in zip((s.fit, s.select, s.verify), (again.fit, again.select, again.verify), strict=True)
    )


def test_nothing_but_verification_reads_the_verification_samples() -> None:
    """Changing only the verification samples changes no byte of the pruned model (PRO and POEM included)."""
    model = BUILDERS["flatten_gemm"]()
    x = inputs_for(model, 80)
    v = split_samples(len(x), seed=0).verify
    assert len(v) == 16
    y = x.copy()
    y[v] = 100.0 * np.random.default_rng(1).standard_normal(y[v].shape)
    a, ra = prune(model, ratio=0.5, calib=x, positions=8)
    b, rb = prune(model, ratio=0.5, calib=y, positions=8)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    out = next(iter(ra.agreement))
    assert ra.agreement[out]["rel_error"] != rb.agreement[out]["rel_error"]  # ... but verification does read them


def test_wilson_interval_matches_known_values() -> None:
    e = wilson(97, 100)  # textbook value: 91.5 % - 99.0 %
    assert e.value == 0.97 and abs(e.low - 0.9154) < 5e-4 and abs(e.high - 0.9897) < 5e-4
    e = wilson(10, 10)
    assert e.high == 1.0 and abs(e.low - 0.7225) < 5e-4
    m = mean_interval(np.array([0.9, 1.0, 0.8, 1.0]))
    assert m.low < 0.925 < m.high and m.high <= 1.0


def test_report_flags_too_few_verification_samples_and_never_says_held_out() -> None:
    model = BUILDERS["flatten_gemm"]()
    _, rep = prune(model, ratio=0.5, calib=inputs_for(model, 40), positions=8)
    assert rep.verification["samples"] == 8 and not rep.verification["trusted"]
    text = rep.summary()
    assert "only 8 verification samples" in text and "held-out" not in text
    assert "95 % CI" in text and "never used for fitting or selection" in text
    _, rep = prune(model, ratio=0.5, calib=inputs_for(model, 1), positions=8)
    assert rep.verification["samples"] == 0 and rep.agreement == {}
    assert "agreement with the original was not measured" in rep.summary()


def test_centred_cosine_sees_what_the_uncentred_one_hides() -> None:
    """An output dominated by a constant offset: the uncentred cosine is ~1 for any model, the centred one is not."""
    from onnx_poem.verify import _Accumulator

    rng = np.random.default_rng(0)
    r = 100.0 + rng.standard_normal((200, 10))
    o = 100.0 + rng.standard_normal((200, 10))  # unrelated to r but for the offset
    acc = _Accumulator(keep=True)
    acc.add(r, o)
    res = acc.result(None)
    uncentred = np.mean(np.sum(r * o, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)))
    assert uncentred > 0.999 and res.cosine is not None and abs(res.cosine.value) < 0.2
    assert res.rel_error > 1.0


def _images(folder: Path, n: int, classes: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"class{i % classes}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(sub / f"{i:03d}.png")


@pytest.mark.parametrize("form", ["npz", "folder"])
def test_verify_data_with_labels_gives_both_accuracies(tmp_path: Path, form: str) -> None:
    model = BUILDERS["flatten_gemm"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 48))
    if form == "npz":
        np.savez(tmp_path / "v.npz", x=inputs_for(model, 30, seed=5), labels=np.arange(30) % 3)
        verify = tmp_path / "v.npz"
    else:
        _images(tmp_path / "v", 30, 3)
        verify = tmp_path / "v"
    res = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), "--ratio", "0.5", "--calib", str(tmp_path / "c.npz"),
                                    "--verify-data", str(verify), "--report", str(tmp_path / "r.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["verification"]["source"] == "--verify-data" and rep["verification"]["samples"] == 30
    assert rep["calibration_samples"] + rep["selection_samples"] == 48  # every calibration sample fits or selects
    a = next(iter(rep["agreement"].values()))
    for key in ("top1_agreement", "accuracy_original", "accuracy_pruned"):
        lo, hi = a[f"{key}_ci95"]
        assert lo <= a[key] <= hi
    assert "top-1 accuracy" in res.output and "30 samples of --verify-data" in res.output


@st.composite
def _hostile_arrays(draw):
    """Arrays of any rank, dtype, size and values, named or not."""
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_]))
    shape = draw(st.lists(st.integers(0, 11), min_size=0, max_size=5))
    fill = draw(st.sampled_from([0.0, 1.0, -1e30, np.nan, np.inf, "random"]))
    if fill == "random":
        arr = np.random.default_rng(0).standard_normal(shape)
    else:
        arr = np.full(shape, fill)
    with np.errstate(invalid="ignore", over="ignore"):
        arr = arr.astype(dtype)
    name = draw(st.sampled_from(["x", "y", "labels", ""]))
    return {name: arr} if name else arr


@given(_hostile_arrays(), st.sampled_from([0.0, 0.3, 0.99]), st.integers(1, 40))
@settings(max_examples=60, deadline=None)
def test_hostile_calibration_arrays_give_our_errors_or_a_valid_model(calib, ratio: float, samples: int) -> None:
    from onnx_poem import PoemError

    model = BUILDERS["conv_chain"]()
    try:
        pruned, _ = prune(model, ratio=ratio, calib=calib, samples=samples, positions=4, method="reap")
    except PoemError:
        return
    onnx.checker.check_model(pruned, full_check=True)


def test_agreement_is_the_same_with_outputs_kept_or_run_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verification keeps the original's outputs and releases its session when they are small, else runs
    both models batch by batch: the same numbers either way."""
    import onnx_poem.verify as verify

    model = BUILDERS["flatten_gemm"]()
    calib = {"x": inputs_for(model, 96)}
    kept = prune(model, calib=calib, ratio=0.5, batch_size=8)[1]
    monkeypatch.setattr(verify, "REFERENCE_BYTES", 0)
    side_by_side = prune(model, calib=calib, ratio=0.5, batch_size=8)[1]
    assert kept.verification_samples > 8 and kept.agreement and kept.agreement == side_by_side.agreement


def test_sample_errors_per_sample_relative_squared_error() -> None:
    """Zero for the same model; for the last conv's weights and bias scaled by 1.1, exactly 0.01 per sample."""
    from onnx_poem.calibration.sources import load_calibration
    from onnx_poem.verify import sample_errors

    model = BUILDERS["conv_chain"]()
    x = inputs_for(model, 37)
    data = load_calibration(model, x, samples=37, seed=0)
    np.testing.assert_array_equal(sample_errors(model, model, data, np.arange(37), batch_size=8), np.zeros(37))
    scaled = onnx.ModelProto()
    scaled.CopyFrom(model)
    last = scaled.graph.node[-1]
    for t in scaled.graph.initializer:
        if t.name in last.input[1:]:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * np.float32(1.1), t.name))
    e = sample_errors(model, scaled, data, np.arange(37), batch_size=8)
    assert e.shape == (37,)
    np.testing.assert_allclose(e, 0.01, rtol=1e-4)
