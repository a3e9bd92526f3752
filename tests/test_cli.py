"""The command line through click's CliRunner: exit codes, one-line errors, nothing written on failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models import BUILDERS, inputs_for, lone_conv
from onnx_poem.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_error_line(res) -> None:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert (lines and lines[-1].startswith("error:")) or "Error:" in res.output
    assert "Traceback" not in res.output


def test_success_writes_model_and_report(work: Path) -> None:
    res = invoke(str(work / "m.onnx"), "--ratio", "0.5", "--calib", str(work / "c.npz"), "--report",
                 str(work / "r.json"))  # fmt: skip
    assert res.exit_code == 0, res.output
    out = work / "m.poem.onnx"
    onnx.checker.check_model(onnx.load(out), full_check=True)
    rep = json.loads((work / "r.json").read_text())
    assert rep["macs_ratio"] < 1 and rep["method"] == "poem"
    macs_line = next(ln for ln in res.output.splitlines() if ln.startswith("MACs"))
    assert macs_line.split()[-1] == f"{rep['macs_ratio']:.3f}"


def test_damping_reaches_the_reconstruction(work: Path) -> None:
    """``--damping`` is the ridge toward the original weights: another value, another model."""
    base = ["--ratio", "0.5", "--calib", str(work / "c.npz"), "--allocation", "uniform"]
    assert invoke(str(work / "m.onnx"), *base, "-o", str(work / "a.onnx")).exit_code == 0
    res = invoke(str(work / "m.onnx"), *base, "-o", str(work / "b.onnx"), "--damping", "10",
                 "--report", str(work / "r.json"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((work / "r.json").read_text())["damping"] == 10
    assert (work / "a.onnx").read_bytes() != (work / "b.onnx").read_bytes()
    res = invoke(str(work / "m.onnx"), *base, "-o", str(work / "c.onnx"), "--damping", "0")
    assert res.exit_code == 2 and not (work / "c.onnx").exists()


def test_allocation_and_round_to_reach_the_report(work: Path) -> None:
    res = invoke(str(work / "m.onnx"), "--ratio", "0.5", "--calib", str(work / "c.npz"), "--allocation", "pro",
                 "--round-to", "2", "--report", str(work / "r.json"))  # fmt: skip
    assert res.exit_code == 0, res.output
    rep = json.loads((work / "r.json").read_text())
    assert rep["allocation"] == "pro"
    assert all(g["kept"] % 2 == 0 or g["kept"] == g["channels"] for g in rep["groups"])
    assert rep["macs_ratio"] < 1


def test_inspect_lists_groups_and_reasons(tmp_path: Path) -> None:
    onnx.save(BUILDERS["residual"](), tmp_path / "r.onnx")
    res = invoke("inspect", str(tmp_path / "r.onnx"))
    assert res.exit_code == 0
    assert "prunable groups" in res.output and "residual" in res.output


@pytest.mark.parametrize(
    "args",
    [
        ["--ratio", "1.0"],
        ["--ratio", "-0.2"],
        ["--ratio", "abc"],
        ["--ratio", "0.5", "--method", "nope"],
        ["--ratio", "0.5", "--samples", "0"],
        ["--ratio", "0.5", "--bogus-flag"],
        [],
        ["--ratio", "0.5", "--target-macs", "0.5"],
        ["--target-macs", "1.5"],
        ["--ratio", "0.5", "--allocation", "nope"],
        ["--ratio", "0.5", "--round-to", "0"],
    ],
)
def test_bad_flags_exit_2(work: Path, args: list[str]) -> None:
    res = invoke(str(work / "m.onnx"), *args)
    assert res.exit_code == 2, res.output
    assert not (work / "m.poem.onnx").exists()


def test_output_path_rules(work: Path) -> None:
    m = str(work / "m.onnx")
    before = (work / "m.onnx").read_bytes()
    res = invoke(m, "--ratio", "0.5", "-o", m)
    assert res.exit_code == 2 and "is the input model" in res.output
    (work / "exists.onnx").write_bytes(b"keep me")
    res = invoke(m, "--ratio", "0.5", "--calib", str(work / "c.npz"), "-o", str(work / "exists.onnx"))
    assert res.exit_code == 2 and "exists" in res.output
    assert (work / "exists.onnx").read_bytes() == b"keep me"
    res = invoke(m, "--ratio", "0.5", "--calib", str(work / "c.npz"), "-o", str(work / "exists.onnx"), "--force")
    assert res.exit_code == 0, res.output
    assert (work / "m.onnx").read_bytes() == before


def test_missing_and_corrupt_models_exit_1(tmp_path: Path) -> None:
    res = invoke(str(tmp_path / "none.onnx"), "--ratio", "0.5")
    assert res.exit_code == 1 and "not found" in res.output
    _one_error_line(res)
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 10)
    res = invoke(str(tmp_path / "bad.onnx"), "--ratio", "0.5")
    assert res.exit_code == 1
    _one_error_line(res)
    assert sorted(tmp_path.iterdir()) == [tmp_path / "bad.onnx"]  # nothing written


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda x: {"x": x[:, :, :9]}, "shape"),
        (lambda x: {"x": x.astype(np.float64)}, "dtype"),
        (lambda x: {"x": np.where(x > 2, np.inf, x).astype(np.float32)}, "NaN or Inf"),
        (lambda x: {"a": x, "b": x}, "lacks model input"),
    ],
)
def test_bad_calibration_exit_1_and_write_nothing(work: Path, make, needle: str) -> None:
    x = inputs_for(BUILDERS["conv_chain"](), 8)
    np.savez(work / "bad.npz", **make(x))
    res = invoke(str(work / "m.onnx"), "--ratio", "0.5", "--calib", str(work / "bad.npz"))
    assert res.exit_code == 1, res.output
    assert needle in res.output
    _one_error_line(res)
    assert not (work / "m.poem.onnx").exists()


def test_unreadable_calibration_file(work: Path) -> None:
    (work / "c.txt").write_text("hello")
    res = invoke(str(work / "m.onnx"), "--ratio", "0.5", "--calib", str(work / "c.txt"))
    assert res.exit_code == 1 and "unsupported calibration file" in res.output
    res = invoke(str(work / "m.onnx"), "--ratio", "0.5", "--calib", str(work / "nope.npz"))
    assert res.exit_code == 1 and "not found" in res.output


def test_no_prunable_layer_writes_nothing_unless_asked(tmp_path: Path) -> None:
    model = lone_conv()
    onnx.save(model, tmp_path / "c.onnx")
    np.save(tmp_path / "x.npy", inputs_for(model, 8))
    res = invoke(str(tmp_path / "c.onnx"), "--ratio", "0.5", "--calib", str(tmp_path / "x.npy"))
    assert res.exit_code == 1 and "nothing" in res.output
    assert not (tmp_path / "c.poem.onnx").exists()
    res = invoke(str(tmp_path / "c.onnx"), "--ratio", "0.5", "--calib", str(tmp_path / "x.npy"), "--allow-unpruned")
    assert res.exit_code == 0
    assert (tmp_path / "c.poem.onnx").exists()


def test_image_folder_calibration(tmp_path: Path) -> None:
    from PIL import Image

    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (14, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    res = invoke(str(tmp_path / "m.onnx"), "--ratio", "0.5", "--calib", str(tmp_path / "imgs"), "--mean",
                 "0.5,0.5,0.5", "--std", "0.25")  # fmt: skip
    assert res.exit_code == 0, res.output
    res = invoke(str(tmp_path / "m.onnx"), "--ratio", "0.5", "--calib", str(tmp_path / "imgs"), "--std", "0", "-f")
    assert res.exit_code == 2 and "std" in res.output


def test_unexpected_failure_is_one_line(work: Path, monkeypatch) -> None:
    import onnx_poem.cli as cli

    def boom(*args, **kwargs):
        raise RuntimeError("simulated runtime failure")

    monkeypatch.setattr(cli, "run", boom)
    res = invoke(str(work / "m.onnx"), "--ratio", "0.5")
    assert res.exit_code == 1 and "internal error" in res.output and "simulated" in res.output
    _one_error_line(res)


def test_a_pruned_model_that_fails_verification_is_not_written(work: Path, monkeypatch) -> None:
    import onnx_poem.pipeline.solving as solving

    real = solving.infer_or_keep  # applied to the final pruned model only

    def broken(model):
        m = real(model)
        m.graph.node[0].op_type = "NoSuchOp"  # the checker rejects it
        return m

    monkeypatch.setattr(solving, "infer_or_keep", broken)
    before = sorted(work.iterdir())
    res = invoke(
        str(work / "m.onnx"), "--ratio", "0.5", "--calib", str(work / "c.npz"), "--report", str(work / "r.json")
    )
    assert res.exit_code == 1 and "pruned model fails the ONNX checker" in res.output, res.output
    _one_error_line(res)
    assert sorted(work.iterdir()) == before
