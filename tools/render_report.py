"""Render the README demo's HTML report headless in Chromium and save a screenshot.

Development tool; needs Debian's ``chromium`` (``apt-get install chromium``)::

    python tools/render_report.py benchmarks/report_demo.png

Runs the README demo (``models/cifar10_resnet20.onnx --ratio 0.5 --calib models/cifar10_calib256.npz``)
with ``--report demo.html`` in a temporary folder, then ``chromium --headless --screenshot``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "demo.html"
        subprocess.run(
            [sys.executable, "-m", "onnx_poem.cli", str(ROOT / "models" / "cifar10_resnet20.onnx"), "--ratio", "0.5",
             "--calib", str(ROOT / "models" / "cifar10_calib256.npz"), "-o", str(Path(tmp) / "pruned.onnx"),
             "--report", str(page), "-q"],
            check=True,
        )  # fmt: skip
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2000",
             f"--screenshot={out.resolve()}", page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    print("wrote", out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
