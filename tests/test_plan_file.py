"""Plans on disk: --save-plan / --apply-plan round-trip to the same bytes; --dry-run writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models import BUILDERS, inputs_for
from onnx_poem.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_error_line(res) -> None:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert lines and (lines[-1].startswith("error:") or "Error:" in res.output), res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("allocation", ["pro", "uniform"])
def test_saved_plan_applies_to_the_same_bytes(work: Path, allocation: str) -> None:
    m, c = str(work / "m.onnx"), str(work / "c.npz")
    res = invoke(m, "--ratio", "0.5", "--calib", c, "--allocation", allocation, "-o", str(work / "a.onnx"),
                 "--save-plan", str(work / "p.json"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (work / "p.json").exists() and (work / "p.npz").exists()
    doc = json.loads((work / "p.json").read_text())
    assert doc["format"] == "onnx-poem-plan" and doc["decisions"]
    res = invoke(m, "--apply-plan", str(work / "p.json"), "-o", str(work / "b.onnx"))
    assert res.exit_code == 0, res.output
    assert (work / "a.onnx").read_bytes() == (work / "b.onnx").read_bytes()
    assert "not measured" in res.output  # no --calib: nothing to claim agreement on
    assert "applied from" in res.output and "samples fit" not in res.output
    # a second planning run gives the same plan bytes (fixed zip timestamps)
    res = invoke(m, "--ratio", "0.5", "--calib", c, "--allocation", allocation, "-o", str(work / "a2.onnx"),
                 "--save-plan", str(work / "q.json"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (work / "p.npz").read_bytes() == (work / "q.npz").read_bytes()


def test_applied_plan_with_calib_does_not_claim_independence(work: Path) -> None:
    m, c = str(work / "m.onnx"), str(work / "c.npz")
    assert invoke(m, "--ratio", "0.5", "--calib", c, "--save-plan", str(work / "p.json")).exit_code == 0
    res = invoke(m, "--apply-plan", str(work / "p.json"), "--calib", c, "-o", str(work / "b.onnx"))
    assert res.exit_code == 0, res.output
    assert "never used for fitting" not in res.output and "not independent" in res.output


def test_plan_for_another_model_or_a_broken_plan_is_one_line(work: Path, tmp_path: Path) -> None:
    m, c = str(work / "m.onnx"), str(work / "c.npz")
    assert invoke(m, "--ratio", "0.5", "--calib", c, "--save-plan", str(work / "p.json")).exit_code == 0
    other = BUILDERS["conv_chain"](seed=1)
    onnx.save(other, work / "other.onnx")
    res = invoke(str(work / "other.onnx"), "--apply-plan", str(work / "p.json"), "-o", str(work / "x.onnx"))
    assert res.exit_code == 2 and "another model" in res.output
    _one_error_line(res)
    (work / "bad.json").write_text("{not json")
    res = invoke(m, "--apply-plan", str(work / "bad.json"), "-o", str(work / "y.onnx"))
    assert res.exit_code == 2 and "not a plan file" in res.output
    (work / "p.npz").unlink()
    res = invoke(m, "--apply-plan", str(work / "p.json"), "-o", str(work / "z.onnx"))
    assert res.exit_code == 2 and "missing" in res.output
    assert not any((work / n).exists() for n in ("x.onnx", "y.onnx", "z.onnx"))


@pytest.mark.parametrize(
    "args",
    [
        ["--apply-plan", "p.json", "--ratio", "0.5"],
        ["--ratio", "0.5", "--dry-run", "--save-plan", "p.json"],
        ["--apply-plan", "m.onnx"],  # the plan would be read from the output's folder: output = the input
    ],
)
def test_plan_flag_conflicts_exit_2(work: Path, args: list[str]) -> None:
    res = invoke(str(work / "m.onnx"), *[str(work / a) if a.endswith((".json", ".onnx")) else a for a in args],
                 "--calib", str(work / "c.npz"), "-o", str(work / "m.onnx"))  # fmt: skip
    assert res.exit_code == 2, res.output
    _one_error_line(res)


def test_dry_run_predicts_the_macs_and_writes_nothing(work: Path) -> None:
    m, c = str(work / "m.onnx"), str(work / "c.npz")
    res = invoke(m, "--ratio", "0.5", "--calib", c, "--dry-run", "--allocation", "uniform")
    assert res.exit_code == 0, res.output
    assert "predicted" in res.output and not (work / "m.poem.onnx").exists()
    predicted = next(ln for ln in res.output.splitlines() if ln.startswith("MACs")).split("->")[1].split()[0]
    res = invoke(m, "--ratio", "0.5", "--calib", c, "--allocation", "uniform", "--report", str(work / "r.json"))
    assert res.exit_code == 0, res.output
    assert int(predicted.replace(",", "")) == json.loads((work / "r.json").read_text())["macs_after"]


def test_dry_run_with_pro_runs_no_solver(work: Path, monkeypatch) -> None:
    import onnx_poem.api as api
    import onnx_poem.pipeline.solving as solving

    def boom(*args, **kwargs):
        raise AssertionError("a dry run solved a group")

    monkeypatch.setattr(solving, "solve_group", boom)
    model = onnx.load(work / "m.onnx")
    result = api.run(model, ratio=0.5, calib=inputs_for(model, 32), dry_run=True, positions=8)
    assert result.model is None and result.report.macs_after < result.report.macs_before
    assert np.isfinite(result.report.macs_ratio)


def test_a_plan_saved_with_the_older_whole_model_digest_still_applies(work: Path) -> None:
    """Plans saved before the digest streamed the weights carry the SHA-256 of the whole serialisation."""
    from onnx_poem.external import legacy_digest
    from onnx_poem.fold import fold_constants
    from onnx_poem.modelio import digest

    m, c = str(work / "m.onnx"), str(work / "c.npz")
    res = invoke(m, "--ratio", "0.5", "--calib", c, "-o", str(work / "a.onnx"), "--save-plan", str(work / "p.json"))
    assert res.exit_code == 0, res.output
    doc = json.loads((work / "p.json").read_text())
    folded = fold_constants(onnx.load(m))
    assert doc["model"]["sha256"] == digest(folded) != legacy_digest(folded)
    doc["model"]["sha256"] = legacy_digest(folded)
    (work / "p.json").write_text(json.dumps(doc))
    res = invoke(m, "--apply-plan", str(work / "p.json"), "-o", str(work / "b.onnx"))
    assert res.exit_code == 0, res.output
    assert (work / "a.onnx").read_bytes() == (work / "b.onnx").read_bytes()
    doc["model"]["sha256"] = "0" * 64
    (work / "p.json").write_text(json.dumps(doc))
    assert invoke(m, "--apply-plan", str(work / "p.json"), "-o", str(work / "c.onnx")).exit_code != 0
