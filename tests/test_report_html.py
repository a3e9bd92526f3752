"""``--report out.html``: one self-contained page (no scripts, no network), its content escaped."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models import BUILDERS, inputs_for
from onnx_poem.api import run_family
from onnx_poem.cli import main
from onnx_poem.htmlreport import render_html


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs


def _page(tmp_path: Path, name: str = "report.html") -> str:
    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", inputs_for(model, 64))
    res = CliRunner().invoke(
        main,
        [str(tmp_path / "m.onnx"), "--ratio", "0.5", "--calib", str(tmp_path / "x.npy"), "-o",
         str(tmp_path / "out.onnx"), "--report", str(tmp_path / name)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return (tmp_path / name).read_text()


def test_the_html_report_is_self_contained_and_shows_the_run(tmp_path: Path) -> None:
    page = _page(tmp_path)
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags and "link" not in parser.tags and "img" not in parser.tags
    assert not any(k in ("src", "href") for k, _ in parser.attrs)
    assert "http://" not in page and "https://" not in page
    for section in ("Before and after", "Agreement with the original", "Kept channels per group", "Error curves"):
        assert section in page
    assert parser.tags.count("svg") >= 3  # interval, bars, a curve
    assert "Conv" in page and "0.5" in page


def test_a_json_report_is_still_json(tmp_path: Path) -> None:
    import json

    data = json.loads(_page(tmp_path, "report.json"))
    assert data["curves"] and all(c["cut"] <= c["removed"][-1] for c in data["curves"].values())


def test_names_in_the_model_are_escaped() -> None:
    model = BUILDERS["conv_chain"]()
    (res,) = run_family(model, [0.5], calib=inputs_for(model, 64))
    res.report.model = "<script>alert(1)</script>"
    page = render_html(res.report)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_family_page_has_its_trade_off() -> None:
    model = BUILDERS["conv_chain"]()
    family = run_family(model, [0.2, 0.5], calib=inputs_for(model, 64))
    page = render_html(family[0].report, [r.report for r in family])
    assert "The family" in page and "r=0.2" in page and "r=0.5" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_page_renders_in_a_real_browser(tmp_path: Path) -> None:
    _page(tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
         f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.stat().st_size > 10_000  # a blank page is a few kB
