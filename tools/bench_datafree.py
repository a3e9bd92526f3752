"""What can pruning do without real calibration data? (issue: no data)

For each benchmark model, at one ratio, the metric on the evaluation split of:

* ``real``: the default method on 512 real calibration samples;
* ``gauss``: the default method on synthetic standard-normal inputs (``--synthetic``);
* ``pink``: the default method on images with a natural 1/f amplitude spectrum,
  scaled per channel to the mean and spread of the real inputs (more than a
  data-free user would know; MiniLM: random token ids with full attention masks);
* ``l1``: filter-norm selection with no reconstruction (a data-free criterion:
  its result does not depend on the calibration data), uniform allocation.

The bar for a data-free option: keep at least half of what real calibration keeps
above the ``l1`` baseline, ``(x − l1) ≥ (real − l1) / 2``.

    python tools/bench_datafree.py --models cifar10_resnet20 --ratio 0.5 --out benchmarks/datafree
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
from bench_data import beside, session, tasks

SOURCES = ("real", "gauss", "pink", "l1")


def pink_images(like: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` images shaped like ``like[0]`` (NCHW) with a 1/f amplitude spectrum, matched per channel to ``like``."""
    rng = np.random.default_rng(seed)
    _, c, h, w = like.shape
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.sqrt(fy**2 + fx**2), 1.0 / max(h, w))
    spec = amp * np.exp(2j * np.pi * rng.random((n, c, h, w // 2 + 1)))
    x = np.fft.irfft2(spec, s=(h, w), axes=(2, 3))
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    mean, std = like.mean(axis=(0, 2, 3), keepdims=True), like.std(axis=(0, 2, 3), keepdims=True)
    return (x * std + mean).astype(like.dtype)


def run_one(a: argparse.Namespace) -> dict:
    import onnx

    from onnx_poem import prune

    task = tasks(Path(a.shared))[a.model]()
    original = onnx.load(str(Path(a.shared) / "models" / task.model_file))
    real = task.calib(a.samples)
    options: dict = {"ratio": a.ratio, "seed": a.seed}
    if a.source == "real":
        options["calib"] = real
    elif a.source == "gauss":
        options["synthetic"] = True
        options["samples"] = a.samples
    elif a.source == "pink":
        if "input_ids" in real:
            rng = np.random.default_rng(a.seed)
            ids = rng.integers(1000, 30000, real["input_ids"].shape).astype(real["input_ids"].dtype)
            ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
            options["calib"] = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                "token_type_ids": np.zeros_like(ids)}  # fmt: skip
        else:
            options["calib"] = {"input": pink_images(real["input"], a.samples, a.seed)}
    else:  # l1: selection by filter norm, nothing fitted to the data
        options.update(method="l1", allocation="uniform", calib=real)
    t = time.perf_counter()
    try:
        pruned, rep = prune(original, **options)
    except Exception as e:  # e.g. synthetic data for integer inputs
        return {"model": a.model, "source": a.source, "ratio": a.ratio, "error": f"{type(e).__name__}: {e}"[:160]}
    return {
        "model": a.model,
        "source": a.source,
        "ratio": a.ratio,
        "macs_ratio": rep.macs_ratio,
        "metric": task.evaluate(session(pruned.SerializeToString())),
        "prune_s": time.perf_counter() - t,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cifar10_resnet20")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    p.add_argument("--work", default="/tmp/onnx-poem-bench")
    p.add_argument("--out", default="benchmarks/datafree")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        a.model, a.source = a.models, a.one
        print(json.dumps(run_one(a)))
        return
    command = "python tools/bench_datafree.py " + " ".join(x for x in sys.argv[1:] if x != "--resume")
    rows: dict[str, dict[str, dict]] = {}
    for model in a.models.split(","):
        for source in SOURCES:
            cached = Path(a.work) / "datafree" / f"{model}.{source}.{a.ratio}.{a.samples}.{a.seed}.json"
            cmd = [sys.executable, __file__, "--one", source, "--models", model, "--ratio", str(a.ratio),
                   "--samples", str(a.samples), "--seed", str(a.seed), "--shared", a.shared]  # fmt: skip
            row = run_row(cmd, cached, reuse=a.resume)
            rows.setdefault(model, {})[source] = row
            print(model, source, row, file=sys.stderr, flush=True)
        made = sorted({str(r.get("commit", "?")) for rs in rows.values() for r in rs.values()})
        _write(rows, Path(a.out), command + f"\n# tables at commit {_commit()}, rows computed at {', '.join(made)}")


def _write(rows: dict[str, dict[str, dict]], out: Path, command: str) -> None:
    def cell(r: dict) -> str:
        if "metric" not in r:
            return "fails: " + str(r.get("error", "?"))[:60]
        return f"{r['metric']:.2f} ({r['macs_ratio']:.3f})"

    lines = [f"Generated by:\n\n```\n{command}\n```\n", "Metric (MACs ratio) on the evaluation split:", ""]
    lines += ["| model | " + " | ".join(SOURCES) + " | best data-free keeps of (real − l1) |", "|---|" + "---|" * 5]
    for model, r in rows.items():
        real, l1 = r.get("real", {}).get("metric"), r.get("l1", {}).get("metric")
        share = ""
        if real is not None and l1 is not None and real > l1:
            free = [r[s]["metric"] for s in ("gauss", "pink") if "metric" in r.get(s, {})]
            share = f"{100 * (max(free) - l1) / (real - l1):.0f} %" if free else "n/a"
        lines.append(f"| {model} | " + " | ".join(cell(r.get(s, {})) for s in SOURCES) + f" | {share} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    beside(out, ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
