"""Does what onnx-poem prints about a pruned model hold on data it never saw?

For each model, configuration and calibration-sample count: prune with a seeded
random subset of the calibration split of BENCHMARK.md (its first images are
sorted by class on MNIST), then compare with the original on the
*evaluation* split (which the tool never sees):

* real agreement: top-1 agreement with the original (classifiers) or the
  centred cosine of the output (embeddings, e.g. MiniLM's sentence embedding),
  centred on the original's mean output over the evaluation split;
* the same measure as the run's report gave it, with its 95 % interval and the
  verification count, and whether the real value lies inside that interval;
* the benchmark metric of the pruned model.

Configurations: ``poem+pro`` (the default), ``poem`` (uniform), ``reap``, ``l1``
(uniform) or the name ``default`` (whatever ``prune()`` does by default).

    python tools/bench_trust.py --models mnist_cnn --configs default,poem,reap,l1 \\
        --samples 16,32,64,128,256,512,2048 --ratios 0.5 --out benchmarks/samples

Each row runs in a fresh process and is cached in ``--work`` (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _commit, run_row
from bench_data import _run_batched, beside, session, tasks

FIELDS = [
    "model",
    "config",
    "ratio",
    "samples",
    "seed",
    "macs_ratio",
    "measure",
    "real",
    "reported",
    "ci_low",
    "ci_high",
    "verify_n",
    "inside",
    "caveats",
    "metric",
    "prune_s",
]


def _options(config: str) -> dict:
    if config == "default":
        return {}
    method, *variants = config.split("+")
    return {"method": method, "allocation": "pro" if "pro" in variants else "uniform"}


def run_one(a: argparse.Namespace) -> dict:
    import onnx

    from onnx_poem import prune

    task = tasks(Path(a.shared))[a.model]()
    original = onnx.load(str(Path(a.shared) / "models" / task.model_file))
    t = time.perf_counter()
    calib = task.calib(10**6)  # the whole calibration split, then a seeded random subset of it
    pick = np.sort(np.random.default_rng([a.seed, 11]).permutation(len(next(iter(calib.values()))))[: a.samples])
    calib = {k: np.ascontiguousarray(v[pick]) for k, v in calib.items()}
    pruned, rep = prune(original, ratio=a.ratio, calib=calib, samples=a.samples, seed=a.seed, **_options(a.config))
    prune_s = time.perf_counter() - t
    so, sp = session(original.SerializeToString()), session(pruned.SerializeToString())
    feed = task.eval_inputs()
    r = _run_batched(so, feed, batch=64)[0].astype(np.float64)
    o = _run_batched(sp, feed, batch=64)[0].astype(np.float64)
    name = so.get_outputs()[0].name
    got = rep.agreement.get(name, {})
    if task.metric.startswith("top-1"):
        measure, real = "top1_agreement", float(np.mean(np.argmax(r, 1) == np.argmax(o, 1)))
    else:
        rc, oc = r - r.mean(0), o - r.mean(0)
        cos = np.sum(rc * oc, 1) / np.maximum(np.linalg.norm(rc, axis=1) * np.linalg.norm(oc, axis=1), 1e-300)
        measure, real = "cosine", float(np.mean(cos))
    low, high = got.get(f"{measure}_ci95", [float("nan"), float("nan")])
    return {
        "model": a.model,
        "config": a.config,
        "ratio": a.ratio,
        "samples": a.samples,
        "seed": a.seed,
        "macs_ratio": rep.macs_ratio,
        "measure": measure,
        "real": real,
        "reported": got.get(measure, float("nan")),
        "ci_low": low,
        "ci_high": high,
        "verify_n": rep.verification.get("samples", 0),
        "inside": bool(low <= real <= high) if low == low else False,
        "caveats": "; ".join(rep.verification.get("caveats", [])),
        "metric": task.evaluate(sp),
        "prune_s": prune_s,
    }


def _spawn(model: str, config: str, ratio: float, samples: int, a: argparse.Namespace) -> dict:
    key = f"{model}.{config}.{ratio}.{samples}.{a.seed}.json"
    cached = Path(a.work) / "trust" / key
    if (a.resume or a.cached_only) and cached.exists():
        return dict(json.loads(cached.read_text()))
    if a.cached_only:
        return {}
    cmd = [sys.executable, __file__, "--one", "--models", model, "--configs", config, "--ratios", str(ratio),
           "--samples", str(samples), "--seed", str(a.seed), "--shared", a.shared]  # fmt: skip
    row = run_row(cmd, cached, reuse=False)
    if "error" in row:
        print(f"  FAILED {model} {config} {ratio} {samples}: {row['error']}", file=sys.stderr)
        return {"model": model, "config": config, "ratio": ratio, "samples": samples, "error": row["error"]}
    return row


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return "" if v != v else f"{v:.4f}" if abs(v) <= 1 else f"{v:.2f}"
    return str(v)


def write(rows: list[dict], out: Path, command: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"Generated by:\n\n```\n{command}\n```\n", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in FIELDS) + " |" for r in rows]
    pivot = _pivot(rows)
    beside(out, ".md").write_text("\n".join(lines + pivot) + "\n")
    beside(out, ".json").write_text(json.dumps(rows, indent=1))


def _pivot(rows: list[dict]) -> list[str]:
    """Real agreement by sample count, one column per configuration (best in bold)."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    lines = ["", "Real agreement on the evaluation split (never seen by the tool), by calibration samples:", ""]
    lines += ["| model | ratio | samples | " + " | ".join(configs) + " |", "|---|---|---|" + "---|" * len(configs)]
    keys = dict.fromkeys((r["model"], r["ratio"], r["samples"]) for r in rows)
    for model, ratio, samples in keys:
        vals = {r["config"]: r.get("real", float("nan")) for r in rows
                if (r["model"], r["ratio"], r["samples"]) == (model, ratio, samples)}  # fmt: skip
        best = max((v for v in vals.values() if v == v), default=float("nan"))
        cells = [("**" + _fmt(vals[c]) + "**" if vals.get(c) == best else _fmt(vals.get(c, float("nan"))))
                 for c in configs]  # fmt: skip
        lines.append(f"| {model} | {ratio} | {samples} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], out: Path) -> Path | None:
    """``<out>.svg``: real agreement against calibration samples (log scale), one panel per model (rows of one
    ratio)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "onnx-poem"
    models = list(dict.fromkeys(r["model"] for r in rows if "real" in r))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for config in dict.fromkeys(r["config"] for r in rows):
            pts = sorted((r["samples"], r["real"]) for r in rows if r["model"] == model and r["config"] == config
                         and "real" in r)  # fmt: skip
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=config, lw=2.2 if "pro" in config else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("calibration samples")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("real agreement with the original")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = beside(out, ".svg")
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mnist_cnn")
    p.add_argument("--configs", default="default,poem,reap,l1")
    p.add_argument("--samples", default="64,512")
    p.add_argument("--ratios", default="0.3,0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    p.add_argument("--work", default="/tmp/onnx-poem-bench")
    p.add_argument("--out", default="benchmarks/trust")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--cached-only", action="store_true", help="tables from the rows in --work only; run nothing")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        a.model, a.config, a.ratio, a.samples = a.models, a.configs, float(a.ratios), int(a.samples)
        print(json.dumps(run_one(a)))
        return
    command = "python tools/bench_trust.py " + " ".join(
        x for x in sys.argv[1:] if x not in ("--resume", "--cached-only")
    )
    rows: list[dict] = []
    for model in a.models.split(","):
        for ratio in map(float, a.ratios.split(",")):
            for samples in map(int, a.samples.split(",")):
                for config in a.configs.split(","):
                    r = _spawn(model, config, ratio, samples, a)
                    if not r:
                        continue
                    rows.append(r)
                    print(f"{model} {config} {ratio} {samples}: real {r.get('real')} reported {r.get('reported')} "
                          f"[{r.get('ci_low')}, {r.get('ci_high')}] metric {r.get('metric')} "
                          f"{r.get('prune_s')} s", file=sys.stderr, flush=True)  # fmt: skip
                    write(rows, Path(a.out), command + f"\n# at commit {_commit()}")
    made = sorted({str(r.get("commit", "?")) for r in rows})
    write(rows, Path(a.out), command + f"\n# tables at commit {_commit()}, rows computed at {', '.join(made)}")
    first = float(a.ratios.split(",")[0])
    plot([r for r in rows if r["ratio"] == first], Path(a.out))


if __name__ == "__main__":
    main()
