"""A family of models from one run: ``--ratio 0.2,0.5`` (one load, one analysis, one PRO curve pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner

from models import BUILDERS, inputs_for
from onnx_poem.api import run, run_family
from onnx_poem.cli import main


def test_a_family_gives_one_model_per_ratio_and_its_largest_equals_a_separate_run() -> None:
    model = BUILDERS["residual"]()
    x = inputs_for(model, 96)
    family = run_family(model, [0.2, 0.5], calib=x, prune_residual=True)
    assert [r.report.ratio for r in family] == [0.2, 0.5]
    assert family[0].report.macs_after > family[1].report.macs_after
    for res in family:
        onnx.checker.check_model(res.model, full_check=True)
    alone = run(model, ratio=0.5, calib=x, prune_residual=True)
    assert alone.model is not None and family[1].model is not None
    assert family[1].model.SerializeToString(deterministic=True) == alone.model.SerializeToString(deterministic=True)
    assert "family_shared" in family[0].report.timings


def _write(tmp_path: Path) -> tuple[Path, Path]:
    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", inputs_for(model, 64))
    return tmp_path / "m.onnx", tmp_path / "x.npy"


def test_the_cli_writes_a_family_and_its_trade_off_table(tmp_path: Path) -> None:
    m, x = _write(tmp_path)
    args = [str(m), "--ratio", "0.2,0.5", "--calib", str(x), "-o", str(tmp_path / "out.onnx"), "--report"]
    res = CliRunner().invoke(main, [*args, str(tmp_path / "rep.json")])
    assert res.exit_code == 0, res.output
    for r in ("0.2", "0.5"):
        onnx.checker.check_model(onnx.load(str(tmp_path / f"out.r{r}.onnx")), full_check=True)
        assert (tmp_path / f"rep.r{r}.json").is_file()
    assert not (tmp_path / "out.onnx").exists()
    assert "family" in res.output and "shared by all" in res.output


def test_a_family_checks_every_output_before_it_starts(tmp_path: Path) -> None:
    m, x = _write(tmp_path)
    (tmp_path / "out.r0.5.onnx").write_bytes(b"keep me")
    res = CliRunner().invoke(main, [str(m), "--ratio", "0.2,0.5", "--calib", str(x), "-o", str(tmp_path / "out.onnx")])
    assert res.exit_code != 0 and "error:" in res.output
    assert (tmp_path / "out.r0.5.onnx").read_bytes() == b"keep me" and not (tmp_path / "out.r0.2.onnx").exists()


def test_bad_family_ratios_are_one_clear_error(tmp_path: Path) -> None:
    m, x = _write(tmp_path)
    for bad in ("0.2,1.2", "0.2,0.2", "0.2,x"):
        res = CliRunner().invoke(main, [str(m), "--ratio", bad, "--calib", str(x)])
        assert res.exit_code == 2 and "ratio" in res.output, res.output
    res = CliRunner().invoke(main, [str(m), "--ratio", "0.2,0.5", "--calib", str(x), "--dry-run"])
    assert res.exit_code == 2 and "family" in res.output
