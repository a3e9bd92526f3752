"""``--threads N``: onnxruntime sessions and every loaded BLAS are capped for the run, then restored."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS beside numpy's)
from click.testing import CliRunner

from models import conv_chain, inputs_for
from onnx_poem.cli import main
from onnx_poem.graph import session
from onnx_poem.threads import SPIN_ENV, SPIN_LOG2, blas_controls, limit_threads, ort_threads, spin_controls


def test_limit_threads_caps_sessions_and_blas_then_restores() -> None:
    controls = blas_controls()
    if not controls:
        pytest.skip("no OpenBLAS loaded in this process (not Linux, or another BLAS)")
    before = [get() for get, _ in controls]
    model = conv_chain()
    with limit_threads(1):
        assert ort_threads() == 1
        assert [get() for get, _ in controls] == [1] * len(controls)
        assert session(model).get_session_options().intra_op_num_threads == 1
    assert ort_threads() == 0
    assert [get() for get, _ in controls] == before
    assert session(model).get_session_options().intra_op_num_threads == 0


def test_a_run_shortens_the_idle_blas_spin_then_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a run every loaded OpenBLAS reads the short spin (its workers restarted with it), after it the
    setting it had; a product computed inside equals one computed outside."""
    controls = spin_controls()
    if not controls:
        pytest.skip("no OpenBLAS with a rereadable spin setting loaded in this process")
    monkeypatch.delenv(SPIN_ENV, raising=False)
    before = [timeout() for timeout, _ in controls]
    a = np.random.default_rng(0).standard_normal((300, 400))
    outside = a @ a.T
    for n in (None, 1):
        with limit_threads(n):
            assert [timeout() for timeout, _ in controls] == [SPIN_LOG2] * len(controls)
            if n is None:  # the same threads: the same sums
                assert np.array_equal(a @ a.T, outside)
        assert SPIN_ENV not in os.environ
        assert [timeout() for timeout, _ in controls] == before


def test_a_user_spin_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    controls = spin_controls()
    if not controls:
        pytest.skip("no OpenBLAS with a rereadable spin setting loaded in this process")
    monkeypatch.setenv(SPIN_ENV, "8")
    with limit_threads(None):
        assert os.environ[SPIN_ENV] == "8"
    assert os.environ[SPIN_ENV] == "8"


def test_cli_threads_gives_the_same_model(tmp_path: Path) -> None:
    """The same thread count: the same bytes; another: the same channels kept, weights equal to rounding
    (BLAS and onnxruntime split their sums by thread)."""
    model = conv_chain()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    calib = tmp_path / "c.npz"
    np.savez(calib, **{model.graph.input[0].name: inputs_for(model, 64)})
    outs = []
    for extra in (["--threads", "1"], ["--threads", "1"], []):
        out = tmp_path / f"out{len(outs)}.onnx"
        res = CliRunner().invoke(
            main, [str(src), "--ratio", "0.5", "--calib", str(calib), "-o", str(out), "-q", *extra]
        )
        assert res.exit_code == 0, res.output
        outs.append(onnx.load(out))
    assert outs[0].SerializeToString() == outs[1].SerializeToString()
    one = {t.name: onnx.numpy_helper.to_array(t) for t in outs[0].graph.initializer}
    default = {t.name: onnx.numpy_helper.to_array(t) for t in outs[2].graph.initializer}
    assert one.keys() == default.keys()
    for name, w in one.items():
        assert w.shape == default[name].shape, name
        np.testing.assert_allclose(w, default[name], rtol=1e-3, atol=1e-5 * float(np.abs(w).max() + 1e-12))


def test_cli_threads_must_be_positive(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), "--ratio", "0.5", "--threads", "0"])
    assert res.exit_code == 2
    assert "--threads" in res.output
