"""``--target-latency`` against PRO at the MACs that give the same latency (issue 14's check).

    python tools/bench_latency_target.py --models cifar10_resnet20,imagenet_efficientnet_lite0 \\
        --target 0.6 --out benchmarks/latency_target

Per model (BENCHMARK.md's calibration and evaluation splits, 512 calibration samples):

1. ``prune(..., target_latency=T, latency_on="ort-cpu:2", latency_batch=32)`` (default method and PRO);
   its latency over the original's is measured again here in a fresh session (``time_pairs``:
   alternating pairs of runs, median ratio, no spinning workers, at least 30 pairs and 6 s), and its
   metric on the evaluation split;
2. PRO by MACs (``target_macs``; ``--round-to 1`` as by default, and ``--round-to 8``), its MACs target
   moved by secant steps towards the latency the first run measured (``--probes`` runs per variant);
   the metric at that latency is interpolated linearly between the two runs that bracket it (or the
   nearest run when none do, marked).

Run it on an otherwise idle machine; the latency tables go to a temporary cache.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import beside, session, tasks

from onnx_poem import prune
from onnx_poem.latency import Runtime, Timing
from onnx_poem.latency.runtimes import time_pairs
from onnx_poem.report import count_macs


def _row(task, original, pruned, calib, timing: Timing, work: Path, label: str) -> dict:
    path = work / f"{task.key}.{label}.onnx"
    onnx.save(pruned, str(path))
    one = {k: v[:1] for k, v in calib.items()}
    return {
        "model": task.key,
        "run": label,
        "macs": count_macs(pruned, one) / count_macs(original, one),
        "latency": time_pairs(timing.original, timing.runtime.load(pruned), timing.feed, runs=30, min_seconds=6.0),
        "metric": task.evaluate(session(str(path), 2)),
    }


def _at(rows: list[dict], latency: float) -> tuple[float, str]:
    """The metric at ``latency``, interpolated between the two rows that bracket it."""
    rows = sorted(rows, key=lambda r: r["latency"])
    for a, b in itertools.pairwise(rows):
        if a["latency"] <= latency <= b["latency"]:
            w = (latency - a["latency"]) / max(b["latency"] - a["latency"], 1e-9)
            return a["metric"] + w * (b["metric"] - a["metric"]), "interpolated"
    near = min(rows, key=lambda r: abs(r["latency"] - latency))
    return near["metric"], f"nearest (latency {near['latency']:.3f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cifar10_resnet20,imagenet_efficientnet_lite0")
    p.add_argument("--target", type=float, default=0.6)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--probes", type=int, default=3)
    p.add_argument("--residual", action="store_true", help="prune residual streams too (all runs)")
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    p.add_argument("--out", default="benchmarks/latency_target")
    a = p.parse_args()
    runtime = Runtime.parse("ort-cpu:2")
    rows: list[dict] = []
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for key in a.models.split(","):
            task = tasks(Path(a.shared))[key]()
            original = onnx.load(str(Path(a.shared) / "models" / task.model_file))
            calib = task.calib(a.samples)
            feed = {k: np.ascontiguousarray(np.resize(v, (32, *v.shape[1:]))) for k, v in calib.items()}
            timing = Timing.start(runtime, original, feed)
            pruned, rep = prune(original, calib=calib, target_latency=a.target, latency_on=runtime.name,
                                latency_batch=32, latency_cache=str(work / "c"), prune_residual=a.residual)  # fmt: skip
            own = _row(task, original, pruned, calib, timing, work, f"latency {a.target:g}")
            own["reported"] = rep.latency.get("measured")
            own["chosen"] = rep.latency.get("chosen")
            rows.append(own)
            print(own, file=sys.stderr, flush=True)
            for r8 in (1, 8):
                tried: list[dict] = []
                macs = own["macs"]
                for i in range(a.probes):
                    pm, _ = prune(original, calib=calib, target_macs=float(np.clip(macs, 0.05, 1.0)), round_to=r8,
                                  prune_residual=a.residual)  # fmt: skip
                    tried.append(_row(task, original, pm, calib, timing, work, f"pro r{r8} #{i}"))
                    print(tried[-1], file=sys.stderr, flush=True)
                    last = tried[-1]
                    macs = last["macs"] * own["latency"] / max(last["latency"], 1e-9)
                    if len(tried) >= 2:  # secant on (latency, macs) of the last two
                        x0, x1 = tried[-2], tried[-1]
                        if abs(x1["latency"] - x0["latency"]) > 1e-3:
                            slope = (x1["macs"] - x0["macs"]) / (x1["latency"] - x0["latency"])
                            macs = x1["macs"] + slope * (own["latency"] - x1["latency"])
                rows += tried
                metric, how = _at(tried, own["latency"])
                summary.append(
                    f"| {key} | {own['latency']:.3f} | {own['macs']:.3f} | {own['metric']:.2f} | PRO r{r8} | "
                    f"{metric:.2f} ({how}) | {own['metric'] - metric:+.2f} |"
                )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = "python tools/bench_latency_target.py " + " ".join(sys.argv[1:])
    lines = [f"Generated by `{head}` at commit {commit}.\n"]
    lines += [
        "| model | latency (measured) | MACs | metric | against | its metric at that latency | difference |",
        "|---|---|---|---|---|---|---|",
        *summary,
        "",
        "Every run (latency: pruned / original on onnxruntime CPU, 2 threads, batch 32, measured here):",
        "",
        "| model | run | MACs | latency | metric |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['run']}{' (' + r['chosen'] + ')' if r.get('chosen') else ''} | {r['macs']:.3f} | "
        f"{r['latency']:.3f} | {r['metric']:.2f} |"
        for r in rows
    ]
    beside(Path(a.out), ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
