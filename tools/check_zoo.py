"""Prune every model written by tools/export_zoo.py at --ratio 0.3 and tabulate the outcome.

    python tools/check_zoo.py ZOO_DIR benchmarks/zoo.md [--samples 256] [--timeout 900]

A model with a ``<model>.calib.npz`` beside it (``tools/fetch_published.py``) is calibrated on that file.

One process per model (a crash or a hang costs one row, not the table): default
settings (POEM, cascade, PRO), seeded standard-normal calibration inputs (the zoo has
random weights, so there is no real data to prefer).  A row gives the groups found and
pruned, the MACs and parameter ratios, the agreement with the original on the run's own
verification split (samples never used for fitting or selection), every part left
unpruned with its reason (counted), and the prune time.  A run that ends in anything but
a pruned model is shown as ``refused`` (one of onnx-poem's own errors, with its message)
or ``INTERNAL ERROR`` (anything else: a bug).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

RATIO = 0.3


def _calibration(model: onnx.ModelProto, samples: int) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    feed = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feed[vi.name] = rng.standard_normal((samples, *dims[1:])).astype(dtype)
    return feed


def one(path: Path, samples: int) -> dict[str, object]:
    """Prune one model; the row as plain data."""
    from onnx_poem import prune
    from onnx_poem.errors import PoemError

    model = onnx.load(str(path))
    sidecar = path.with_name(path.name.removesuffix(".onnx") + ".calib.npz")  # tools/fetch_published.py
    calib = str(sidecar) if sidecar.exists() else _calibration(model, samples)
    t0 = time.perf_counter()
    try:
        pruned, rep = prune(model, ratio=RATIO, calib=calib, samples=samples)
        onnx.checker.check_model(pruned, full_check=True)
    except PoemError as e:
        return {"status": "refused", "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
    except Exception as e:
        return {"status": "INTERNAL ERROR", "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - t0}
    first = next(iter(rep.agreement.values()), {})
    reasons = Counter(f"{u['reason'][:90]}" for u in rep.unprunable)
    return {
        "status": "ok",
        "groups": len(rep.groups),
        "pruned": sum(g["kept"] < g["channels"] for g in rep.groups),
        "macs_ratio": rep.macs_ratio,
        "params_ratio": rep.params_ratio,
        "rel_error": first.get("rel_error"),
        "cosine": first.get("cosine"),
        "top1": first.get("top1_agreement"),
        "verified_on": rep.verification.get("samples"),
        "unpruned": [f"{n}x {r}" if n > 1 else r for r, n in reasons.most_common()],
        "seconds": time.perf_counter() - t0,
    }


def _fmt(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", type=Path)
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: prune one model, print its row
    ap.add_argument("--rows", type=Path, help="tabulate the rows a run printed (its stdout) instead of pruning")
    ap.add_argument("--commit", help="the commit the rows ran at (default: this checkout's HEAD)")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.samples)))
        return
    if args.rows:
        found = []
        for line in args.rows.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        _table([r for r in found if isinstance(r, dict) and "model" in r], args)
        return
    rows = []
    for path in sorted(args.zoo.glob("*.onnx"), key=lambda p: (p.stat().st_size, p.name)):  # small models first
        name, _, exporter = path.name.removesuffix(".onnx").rpartition(".")
        if path.with_name(path.name.removesuffix(".onnx") + ".calib.npz").exists():  # a published model
            name = path.name.removesuffix(".onnx")
            exporter = onnx.load(str(path), load_external_data=False).producer_name or "paddle2onnx (unnamed)"
        cmd = [sys.executable, __file__, str(args.zoo), "--one", str(path), "--samples", str(args.samples)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
            lines = proc.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "status": "INTERNAL ERROR", "error": (proc.stderr.strip().splitlines() or ["crashed"])[-1]}  # fmt: skip
        except subprocess.TimeoutExpired:
            row = {"status": "timeout", "error": f"over {args.timeout} s"}
        row |= {"model": name, "exporter": exporter}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:  # after every row: an interrupted run leaves the rows it finished
            _table(rows, args)


def _table(rows: list[dict], args: argparse.Namespace) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    smaller = [r for r in ok if r["macs_ratio"] < 0.999]
    published = any(args.zoo.glob("*.calib.npz"))
    what = (
        "the published pretrained models of `tools/fetch_published.py` (real weights; synthetic inputs of the "
        "shapes their packages feed, from the `.calib.npz` beside each model)"
        if published
        else "the models of `tools/export_zoo.py` (random weights, seeded standard-normal inputs)"
    )
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    )
    lines = [
        f"Generated by `python tools/check_zoo.py {args.zoo} {args.out} --samples {args.samples}` at commit "
        f"{commit} on {what}; "
        f"`--ratio {RATIO}`, default settings (POEM, cascade, PRO).  Agreement: the run's own verification split "
        "(never used for fitting or selection); on synthetic inputs the agreement numbers say how exactly the "
        "structure was kept, not how the model fares on its task.  The relative error is measured against the "
        "original output's spread over the samples, which is tiny for a random-weight classifier's softmax or a "
        "detector's probability map on noise: read it with the cosine and top-1 columns.  Times: other jobs "
        "shared the 2 cores.",
        "",
        f"**{len(ok)} of {len(rows)} pruned without error; {len(smaller)} of {len(rows)} lose MACs; "
        f"{sum(r['status'] == 'INTERNAL ERROR' for r in rows)} internal errors.**",
        "",
        "| model | exporter | groups pruned / found | MACs ratio | params ratio | rel. error | cosine | top-1 agr. "
        "| time (s) | left unpruned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['exporter']} | **{r['status']}** | | | | | | "
                         f"{_fmt(r.get('seconds'), '.0f')} | {r['error'][:200]} |")  # fmt: skip
            continue
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r['pruned']} / {r['groups']} | {r['macs_ratio']:.3f} | "
            f"{r['params_ratio']:.3f} | {_fmt(r['rel_error'], '.3f')} | {_fmt(r['cosine'], '.4f')} | "
            f"{_fmt(r.get('top1'), '.3f')} | {r['seconds']:.0f} | {'; '.join(r['unpruned']) or '-'} |"
        )
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
