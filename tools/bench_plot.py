"""Plots of a benchmark table: metric against MACs ratio, one line per method, per model.

Usage: ``python tools/bench_plot.py benchmarks/methods.csv`` writes
``benchmarks/methods_plots/<model>.svg`` (``tools/bench.py`` calls it at the end).
Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

STYLE = {"poem": ("C3", "o", 2.4), "reap": ("C0", "s", 1.4), "thinet": ("C2", "^", 1.2)}
PEER_STYLE = ("0.35", "x", 1.2)
METRIC = {"all_minilm_l6_v2": "STS-B Spearman × 100"}  # every other benchmark model: top-1 %


def _num(v: object) -> float:
    try:
        return float(str(v))
    except ValueError:
        return float("nan")


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """One SVG per model; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "onnx-poem"  # stable element ids: same table, same bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and _num(r.get("metric")) == _num(r.get("metric"))]
        base = next((r for r in mine if r["method"] == "original"), None)
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for method in dict.fromkeys(r["method"] for r in mine if r["method"] != "original"):
            pts: dict[float, list[tuple[float, float]]] = {}
            for r in mine:
                if r["method"] == method:
                    pts.setdefault(_num(r["ratio"]), []).append((_num(r["macs_ratio"]), _num(r["metric"])))
            xy = sorted((statistics.mean(p[0] for p in v), statistics.mean(p[1] for p in v)) for v in pts.values())
            if base is not None:
                xy.append((1.0, _num(base["metric"])))
            color, marker, width = STYLE.get(method, PEER_STYLE if method.startswith("onnxsim") else (None, ".", 1.0))
            ls = {"onnxsim-l2": ":", "onnxsim-wanda": "-."}.get(method, "-")
            ax.plot(*zip(*xy, strict=True), ls, color=color, marker=marker, lw=width, label=method)
        if base is not None:
            ax.axhline(_num(base["metric"]), color="k", lw=0.8, ls="--", label="original")
        ax.set_xlabel("MACs ratio (pruned / original)")
        ax.set_ylabel(METRIC.get(model, "top-1 %"))
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        path = out_dir / f"{model}.svg"
        fig.savefig(path, metadata={"Date": None})
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    src = Path(sys.argv[1])
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    for p in plot(rows, src.parent / f"{src.stem}_plots"):
        print(p)


if __name__ == "__main__":
    main()
