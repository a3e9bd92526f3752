"""Benchmark onnx-poem on the protocol of ../shared/docs/BENCHMARK.md.

Methods are onnx-poem's ``--method`` names, optionally suffixed ``+res`` to
prune residual streams too (``poem+res``), ``+srn`` / ``+project`` / ``+auto`` for
``--residual srn`` / ``project`` / ``auto``, and ``+pro`` for PRO per-group
allocation (``poem+pro``, ``poem+res+pro``), ``+d0.1`` (any ``+dX``) for
``--damping X`` (else the default: per group, ``onnx_poem.damping``), ``+aug1`` (any ``+augN``) for
``--augment N``, ``+h0.2`` (any ``+hX``) for ``--hidden X`` (``+h0.2n``: with a rotation per normalisation,
``hidden_rotation="norm"``; ``+hauto``: ``--hidden auto``;
at ac3936f-bc955a6 ``+hX`` meant that and ``+hXg`` one rotation), and ``+r8``
(any ``+rK``) for ``--round-to K``, ``+p256`` (any ``+pK``) for ``--positions K``;
``--target`` turns ``--ratios`` into MACs targets.

Usage (development tool; needs the ``bench`` extra for the onnxsim peer)::

    python tools/bench.py --models cifar10_resnet20,mnist_cnn --methods poem,reap \
        --ratios 0.3,0.5 --peer --out benchmarks/results

Every (model, method, ratio) runs in a fresh subprocess so that its peak RSS
is its own.  One CSV row per run with every field BENCHMARK.md lists; the
Markdown table and the command that produced it go to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import beside, session, tasks

FIELDS = [
    "model",
    "method",
    "ratio",
    "macs_ratio",
    "params_ratio",
    "metric",
    "drop",
    "lat_b1",
    "lat_b32",
    "prune_s",
    "fwd_ratio",
    "peak_rss_mb",
    "calib_samples",
    "seed",
]
PEERS = ("onnxsim-l2", "onnxsim-wanda")
RESIDUAL = {"res": "stream", "srn": "srn", "project": "project", "auto": "auto"}  # method suffix → --residual


def _latency(orig: bytes, pruned: bytes, feed1: dict, feed32: dict, runs: int) -> tuple[float, float]:
    """Latency ratio pruned/original at batch 1 and 32: the median of per-pair ratios, pairs run back to back
    in alternating order, no spinning onnxruntime workers (:func:`onnx_poem.latency.runtimes.time_pairs`).

    Until session 8 this took the ratio of medians of sessions with spinning workers, run in a fixed
    order; on 2 cores one session's spinning workers slowed the other (ResNet-20's ratio ranged
    0.6-1.1 over repeats): the latency columns of tables made before then are noisier than they say."""
    from onnx_poem.latency.runtimes import time_pairs

    so, sp = session(orig, 2, spin=False), session(pruned, 2, spin=False)
    ratios = []
    for feed in (feed1, feed32):
        ratios.append(time_pairs(lambda f: so.run(None, f), lambda f: sp.run(None, f), feed, runs=runs))
    return ratios[0], ratios[1]


def _tile(feed: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(np.resize(v, (n, *v.shape[1:]))) for k, v in feed.items()}


def run_one(args: argparse.Namespace) -> dict:
    """Prune (or not) one model in this process and measure one row."""
    import onnx

    from onnx_poem import prune
    from onnx_poem.report import count_macs, count_params

    shared = Path(args.shared)
    task = tasks(shared, None if args.extra is None else Path(args.extra))[args.model]()
    model_path = shared / "models" / task.model_file
    calib = task.calib(args.samples)
    original = onnx.load(str(model_path))
    one = {k: v[:1] for k, v in calib.items()}
    so = session(original.SerializeToString(), 2)
    t = time.perf_counter()
    for s in range(0, args.samples, 32):
        so.run(None, {k: v[s : s + 32] for k, v in calib.items()})
    fwd = time.perf_counter() - t
    t = time.perf_counter()
    chosen: dict = {}  # --residual auto: the policy kept and each candidate's selection error
    if args.method == "original":
        pruned = original
    elif args.method in PEERS:
        from onnxsim import pruning

        if args.method == "onnxsim-l2":
            pruned = pruning.apply_structured_pruning(original, sparsity=args.ratio)
        else:
            batches = [{k: v[s : s + 32] for k, v in calib.items()} for s in range(0, args.samples, 32)]
            pruned = pruning.apply_structured_wanda_pruning(original, calibration_data=batches, sparsity=args.ratio)
    else:
        method, *variants = args.method.split("+")
        amount = {"target_macs": args.ratio} if args.target else {"ratio": args.ratio}
        positions: dict[str, int] = {}
        for v in variants:
            if v[:1] == "p" and v[1:].isdigit():
                positions = {"positions": int(v[1:])}
        pruned, rep = prune(
            original,
            calib=calib,
            samples=args.samples,
            method=method,
            seed=args.seed,
            mode=args.mode,
            residual=next((RESIDUAL[v] for v in variants if v in RESIDUAL), "internal"),
            allocation="pro" if "pro" in variants else "uniform",
            round_to=next((int(v[1:]) for v in variants if v[:1] == "r" and v[1:].isdigit()), 1),
            damping=next((float(v[1:]) for v in variants if v[:1] == "d"), None),
            augment=next((int(v[3:]) for v in variants if v.startswith("aug")), 0),
            hidden=next((float(v[1:].rstrip("n")) for v in variants if v[:1] == "h" and v != "hauto"), 0.0),
            hidden_auto="hauto" in variants,
            hidden_rotation="norm" if any(v[:1] == "h" and v.endswith("n") for v in variants) else "one",
            **positions,
            **amount,
        )
        if rep.residual_auto:
            chosen = {"residual": rep.residual, "residual_auto": rep.residual_auto}
        if rep.hidden_auto:  # the hidden size kept (None: nothing sliced) and each fraction's selection error
            chosen |= {"hidden_kept": rep.hidden.get("kept"), "hidden_auto": rep.hidden_auto}
    prune_s = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = Path(args.work) / f"{args.model}.{args.method}.{args.ratio}.{args.seed}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(pruned, str(out))
    metric = task.evaluate(session(str(out), 2))
    lat1 = lat32 = float("nan")
    if args.latency and args.method != "original":
        lat1, lat32 = _latency(
            original.SerializeToString(), pruned.SerializeToString(), _tile(calib, 1), _tile(calib, 32), args.latency
        )
    return {
        "model": args.model,
        "method": args.method,
        "ratio": args.ratio,
        "macs_ratio": count_macs(pruned, one) / count_macs(original, one),
        "params_ratio": count_params(pruned) / count_params(original),
        "metric": metric,
        "lat_b1": lat1,
        "lat_b32": lat32,
        "prune_s": prune_s,
        "fwd_ratio": prune_s / fwd,
        "peak_rss_mb": rss,
        "calib_samples": args.samples,
        "seed": args.seed,
        **chosen,
    }


def _commit() -> str:
    """Short commit of the tree this tool runs from, ``+dirty`` when its code differs from it."""
    here = Path(__file__).parent
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ":/onnx_poem", ":/tools"], capture_output=True, text=True, cwd=here
    )
    return (rev.stdout.strip() or "?") + ("+dirty" if dirty.stdout.strip() else "")


def run_row(cmd: list[str], cached: Path, *, reuse: bool) -> dict:
    """One benchmark row: ``cmd`` run in a fresh process (its last stdout line is the JSON row), stamped with
    the commit and cached in ``cached``; with ``reuse`` a cached row is returned instead.  A failed run gives
    ``{"error": <its last stderr line>}`` and is not cached."""
    if reuse and cached.exists():
        return dict(json.loads(cached.read_text()))
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    row = json.loads(p.stdout.strip().splitlines()[-1])
    row["commit"] = _commit()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(row))
    return dict(row)


def _spawn(model: str, method: str, ratio: float, a: argparse.Namespace) -> dict | None:
    key = f"{model}.{method}.{ratio}.{a.seed}.{a.mode}.{int(a.target)}.{a.samples}.{a.latency}.json"
    cached = Path(a.work) / "rows" / key
    if (a.resume or a.cached_only) and cached.exists():
        return dict(json.loads(cached.read_text()))
    if a.cached_only:
        return None
    cmd = [
        sys.executable,
        __file__,
        "--one",
        "--models",
        model,
        "--methods",
        method,
        "--ratios",
        str(ratio),
        "--shared",
        a.shared,
        "--work",
        a.work,
        "--samples",
        str(a.samples),
        "--seed",
        str(a.seed),
        "--mode",
        a.mode,
        *(["--target"] if a.target else []),
        "--latency",
        str(a.latency),
        *(["--extra", a.extra] if a.extra else []),
    ]
    row = run_row(cmd, cached, reuse=False)
    if "error" in row:
        print(f"  FAILED {model} {method} {ratio}: {row['error']}", file=sys.stderr)
        return {"model": model, "method": method, "ratio": ratio, "metric": float("nan"), "error": row["error"]}
    return row


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def write_results(rows: list[dict], out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    base = {(r["model"]): r["metric"] for r in rows if r["method"] == "original"}
    for r in rows:
        r["drop"] = base.get(r["model"], float("nan")) - r.get("metric", float("nan"))
    with open(beside(out, ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*FIELDS, "error"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"Generated by:\n\n```\n{command}\n```\n", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k in FIELDS) + " |")
    lines += [
        "",
        "Mean ± std over seeds:",
        "",
        "| model | method | ratio | macs_ratio | metric | runs |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["ratio"]), []).append(r)
    for (model, method, ratio), rs in groups.items():
        vals = [r["metric"] for r in rs if r.get("metric") == r.get("metric")]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        mean = statistics.mean(vals) if vals else float("nan")
        lines.append(
            f"| {model} | {method} | {ratio} | {_fmt(rs[0].get('macs_ratio', float('nan')))} | "
            f"{mean:.2f} ± {sd:.2f} | {len(vals)} |"
        )
    lines += _pivot(groups)
    beside(out, ".md").write_text("\n".join(lines) + "\n")


def _pivot(groups: dict[tuple, list[dict]]) -> list[str]:
    """Metric (mean over seeds) per model and ratio, one column per method; the best in bold.

    onnx-poem's methods share the MACs ratio of a (model, ratio) row; the peers
    prune differently, so their MACs ratio is given beside their metric.
    """
    methods = list(dict.fromkeys(m for (_, m, _) in groups if m != "original"))
    ours = [m for m in methods if m not in PEERS]
    if not ours:
        return []
    lines = [
        "",
        "Metric by method (mean over seeds; best of onnx-poem's methods in bold; peers: metric (MACs ratio)):",
        "",
        "| model | ratio | MACs | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]

    def mean(rs: list[dict], key: str) -> float:
        v = [float(r[key]) for r in rs if r.get(key) == r.get(key) and key in r]
        return statistics.mean(v) if v else float("nan")

    for model, ratio in dict.fromkeys((mo, ra) for (mo, me, ra) in groups if me != "original"):
        vals = {m: mean(groups.get((model, m, ratio), []), "metric") for m in methods}
        best = max((vals[m] for m in ours if vals[m] == vals[m]), default=float("nan"))
        macs = mean(groups.get((model, ours[0], ratio), []), "macs_ratio")
        cells = []
        for m in methods:
            v = vals[m]
            if v != v:
                cells.append("")
            elif m in PEERS:
                cells.append(f"{v:.2f} ({mean(groups[(model, m, ratio)], 'macs_ratio'):.3f})")
            else:
                cells.append(f"**{v:.2f}**" if v == best else f"{v:.2f}")
        lines.append(f"| {model} | {ratio} | {_fmt(macs)} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cifar10_resnet20,cifar10_kerascnn,mnist_cnn")
    p.add_argument("--methods", default="poem,reap")
    p.add_argument("--ratios", default="0.3,0.5")
    p.add_argument("--peer", action="store_true", help="also run onnxsim's structured L2 and Wanda pruning")
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    p.add_argument(
        "--extra",
        default=None,
        help="folder of development models evaluated like the shared ones: cifar10_vit.onnx "
        "(tools/train_vit_cifar.py: a ViT trained on the CIFAR calibration split, scored on the evaluation split)",
    )
    p.add_argument("--work", default="/tmp/onnx-poem-bench")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seeds", default="0", help="comma-separated seeds for onnx-poem methods (mean ± std)")
    p.add_argument("--mode", default="cascade")
    p.add_argument("--target", action="store_true", help="--ratios are MACs targets (fractions of the original)")
    p.add_argument("--latency", type=int, default=0, help="interleaved latency runs per side (0: skip)")
    p.add_argument("--resume", action="store_true", help="reuse rows an interrupted run left in --work")
    p.add_argument(
        "--cached-only", action="store_true", help="write the tables from the rows in --work only; run nothing"
    )
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        a.model, a.method, a.ratio = a.models, a.methods, float(a.ratios)
        print(json.dumps(run_one(a)))
        return
    command = "python tools/bench.py " + " ".join(x for x in sys.argv[1:] if x != "--resume")
    command += f"\n# tables written at commit {_commit()}, {os.cpu_count()} CPU cores"
    rows: list[dict] = []
    missing: list[str] = []
    methods = a.methods.split(",") + (list(PEERS) if a.peer else [])
    for model in a.models.split(","):
        a.seed = int(a.seeds.split(",")[0])
        specs = [("original", 0.0, a.seed)] + [
            (m, float(ratio), int(s))
            for ratio in a.ratios.split(",")
            for m in methods
            for s in a.seeds.split(",")
            if m not in PEERS or int(s) == a.seed  # the peers take no seed of ours
        ]
        for method, ratio, seed in specs:
            a.seed = seed
            row = _spawn(model, method, ratio, a)
            if row is None:
                missing.append(f"{model} {method} {ratio} seed {seed}")
                continue
            rows.append(row)
            r = rows[-1]
            if method != "original":
                print(
                    f"{model} {method} {ratio}: metric {r.get('metric')} macs {r.get('macs_ratio')} "
                    f"time {r.get('prune_s')}",
                    file=sys.stderr,
                    flush=True,
                )
            write_results(rows, Path(a.out), command)
    made = Counter(str(r.get("commit", "unrecorded")) for r in rows)
    command += "\n# rows computed at: " + ", ".join(f"{c} ({n} rows)" for c, n in sorted(made.items()))
    if missing:
        command += "\n# not run yet (--cached-only): " + "; ".join(missing)
    write_results(rows, Path(a.out), command)
    try:
        from bench_plot import plot
    except ImportError:  # pragma: no cover
        return
    try:
        plot(rows, Path(a.out).parent / f"{Path(a.out).name}_plots")
    except ImportError:
        print("matplotlib missing (pip install -e '.[bench]'): no plots", file=sys.stderr)


if __name__ == "__main__":
    main()
