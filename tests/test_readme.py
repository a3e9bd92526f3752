"""The README's commands, as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import onnx
from click.testing import CliRunner
from conftest import ROOT

from onnx_poem.cli import main

README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_has_install_demo_and_test_commands() -> None:
    blocks = "\n".join(_bash_blocks())
    assert 'pip install -e ".[test]"' in blocks
    assert "onnx-poem models/" in blocks
    assert "python -m pytest -q" in blocks
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\npython -m pytest -q\n" in ci  # CI calls exactly the README's test command


def test_readme_demo_command_runs(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    line = next(ln for b in _bash_blocks() for ln in b.splitlines() if ln.startswith("onnx-poem "))
    args = shlex.split(line)[1:]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    out = tmp_path / args[args.index("-o") + 1]
    onnx.checker.check_model(onnx.load(out), full_check=True)
    macs = float(next(ln for ln in res.output.splitlines() if ln.startswith("MACs")).split()[-1])
    assert 0.45 <= macs <= 0.55  # the README says "about half of its MACs"
