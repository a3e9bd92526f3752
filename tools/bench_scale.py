"""Time onnx-poem against one forward pass on larger models (``benchmarks/scale.md``).

For each model (made by ``tools/export_scale_models.py``; EfficientNet-Lite0 is
read from ``../shared/models``), in a fresh process: one forward pass of the
calibration samples through the original model (onnxruntime, batch 32, the
session options prune uses), then ``prune()`` with the given options on the same
samples, in the same process, right after.  The samples are given as a file, as on
the command line (written chunk by chunk: the process never holds them all, so
its peak memory is the tool's).  The row gives prune / forward, peak
RSS (the prune's maximum resident set, the caller's model counted: the peak is started over after the forward
pass, on Linux; before session 23 the process's, the forward pass included), peak temporary disk (the largest size
of the run's temporary directory, polled every 0.2 s) and the report's stage
timings.  Calibration data are seeded random: images ``N(0, 1)`` for image
inputs, for token inputs random ids with a random valid length per sequence
(16..seq) marked in ``attention_mask``; the timing does not depend on the
values, and the models have random weights anyway.  ``--device cuda`` runs the forward pass and the prune's
model runs on onnxruntime's CUDA provider (``onnx_poem.device``); the row then also gives a second, warm
forward pass, since the first includes the CUDA libraries' start (``benchmarks/gpu.md``).

Usage (development tool)::

    python tools/bench_scale.py --models resnet50,bert_base --dir /work/scale \
        --samples 128 --allocations pro,uniform --out benchmarks/scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import run_row
from bench_data import beside

SHARED_MODELS = {"efficientnet_lite0": "imagenet_efficientnet_lite0.onnx"}


def _calibration(model_path: Path, samples: int) -> dict[str, np.ndarray]:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {}
    mask = None
    for i in m.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in i.type.tensor_type.shape.dim][1:]
        if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            feed[i.name] = rng.standard_normal((samples, *dims)).astype(np.float32)
            continue
        seq = dims[-1] if dims else 128
        if mask is None:
            lengths = rng.integers(16, seq + 1, samples)
            mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        if "mask" in i.name:
            feed[i.name] = mask
        elif "type" in i.name:
            feed[i.name] = np.zeros((samples, seq), dtype=np.int64)
        else:
            feed[i.name] = rng.integers(1000, 30000, (samples, seq)).astype(np.int64) * mask
    return feed


def _write_calibration(model_path: Path, samples: int, work: Path) -> Path:
    """The calibration samples in a file, as a CLI user gives them: one image input is written to an ``.npy``
    chunk by chunk (the process never holds every sample, so its peak memory is the tool's), token inputs to
    an ``.npz``."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    work.mkdir(parents=True, exist_ok=True)
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        out = work / f"calib_{model_path.stem}_{samples}.npz"
        np.savez(out, **_calibration(model_path, samples))
        return out
    dims = tuple(d.dim_value if d.dim_value > 0 else 1 for d in inputs[0].type.tensor_type.shape.dim[1:])
    out = work / f"calib_{model_path.stem}_{samples}.npy"
    rng = np.random.default_rng(0)
    with open(out, "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(fh, {**header, "shape": (samples, *dims)})
        for s in range(0, samples, 64):
            fh.write(rng.standard_normal((min(64, samples - s), *dims)).astype(np.float32).tobytes())
    return out


class _DiskWatch:
    """Largest total size of the files under ``root`` (this run's own temporary folder), polled.

    The run's temporary folder is made private (``tempfile.tempdir`` points into the work folder while
    ``prune`` runs): watching the shared temp dir counted a concurrent run's frontiers too (20 GB read for a
    14.4 GB run).
    """

    def __init__(self, root: Path) -> None:
        self.peak = 0
        self.root = root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _size(self) -> int:
        total = 0
        for root, _, files in os.walk(self.root):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._size())

    def __enter__(self) -> _DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_one(a: argparse.Namespace) -> dict:
    import onnx

    from onnx_poem import prune
    from onnx_poem.calibration.sources import load_calibration
    from onnx_poem.device import use_device
    from onnx_poem.graph import release_segments
    from onnx_poem.report import count_macs, count_params
    from onnx_poem.verify import session

    path = (
        Path(a.shared) / "models" / SHARED_MODELS[a.models]
        if a.models in SHARED_MODELS
        else Path(a.dir) / f"{a.models}.onnx"
    )
    calib = _write_calibration(path, a.samples, Path(a.work))
    model = onnx.load(str(path))
    data = load_calibration(model, calib, samples=a.samples, seed=0)
    with use_device(a.device):
        sess = session(model)

        def forward(s: Any) -> float:
            """Seconds of one pass of the samples through session ``s``, batch 32."""
            t = time.perf_counter()
            for batch in data.batches(np.arange(a.samples), 32):
                s.run(None, batch)
            return time.perf_counter() - t

        fwd = forward(sess)
        # a second pass on a device: the first one's time includes the CUDA libraries' start
        fwd_warm = forward(sess) if a.device != "cpu" else None
    del sess
    release_segments()  # what the forward pass's session left (the heap, onnxruntime's arena) goes back first
    t = time.perf_counter()
    private = Path(a.work) / f"tmp_{os.getpid()}"
    private.mkdir(parents=True, exist_ok=True)
    shared_tmp, tempfile.tempdir = tempfile.tempdir, str(private)
    before = resource.getrusage(resource.RUSAGE_SELF)
    _reset_peak()
    try:
        with _DiskWatch(private) as disk, _OrtClock() as ort_clock:
            pruned, report = prune(
                model, calib=calib, ratio=a.ratios, allocation=a.allocations, samples=a.samples, device=a.device
            )
    finally:
        tempfile.tempdir = shared_tmp
        shutil.rmtree(private, ignore_errors=True)
    prune_s = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    one = data.feed([0])
    calib.unlink()
    macs = count_macs(model, one)
    return {
        "model": a.models,
        "allocation": a.allocations,
        "ratio": a.ratios,
        "gmacs": macs / 1e9,
        "params_m": count_params(model) / 1e6,
        "model_mb": path.stat().st_size / 1e6,
        "samples": a.samples,
        "forward_s": fwd,
        **({"device": a.device, "forward_warm_s": fwd_warm} if a.device != "cpu" else {}),
        "prune_s": prune_s,
        "prune_per_forward": prune_s / fwd,
        "macs_ratio": count_macs(pruned, one) / macs,
        "peak_rss_mb": _peak_mb(),
        "peak_tmp_mb": disk.peak / 1e6,
        "timings": {k: round(v, 2) for k, v in report.timings.items()},
        # the prune's CPU time by where it ran (every thread), its minor page faults, and onnxruntime's runs
        "cpu": {
            "user_s": round(after.ru_utime - before.ru_utime, 1),
            "system_s": round(after.ru_stime - before.ru_stime, 1),
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "onnxruntime_s": round(ort_clock.seconds, 1),
        },
    }


def _reset_peak() -> None:
    """Start the process's peak RSS over (Linux: ``/proc/self/clear_refs``), so that the row's peak is the
    prune's, with the caller's copy of the model counted, not the bench's own forward pass of the original
    (BERT-base's: 2490 MiB, above any point of its prune; session 23).  Elsewhere the process's peak stays."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_mb() -> float:
    """Peak RSS in MiB since :func:`_reset_peak` (``VmHWM``), else the process's (``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _OrtClock:
    """Wall seconds spent inside ``InferenceSession.run`` while the block runs (every session, the probes' too):
    a component timer that the machine's run-to-run spread does not hide (scale.md, session 22)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> _OrtClock:
        import onnxruntime as ort

        self._cls, self._run = ort.InferenceSession, ort.InferenceSession.run
        clock, run = self, self._run

        def timed(sess: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return run(sess, *args, **kwargs)
            finally:
                clock.seconds += time.perf_counter() - t

        self._cls.run = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self._cls.run = self._run  # type: ignore[method-assign]


STAGE_COLS = ("statistics", "selection", "reconstruction", "allocation", "rewrite", "verification", "load", "other")


def _cpu(r: dict) -> str:
    """The row's onnxruntime, CPU and page-fault cells (blank for rows recorded before they were)."""
    c = r.get("cpu")
    if not c:
        return " |  | "
    return f"{c['onnxruntime_s']:.1f} | {c['user_s']:.0f} / {c['system_s']:.0f} | {c['minor_faults'] / 1e6:.2f}"


def _on(r: dict) -> str:
    """The model cell's device note: blank on the CPU; on another, the device and the forward pass after a
    first one (the row's forward pass and ratio count the first, which starts the device's libraries)."""
    if r.get("device", "cpu") == "cpu":
        return ""
    return f" ({r['device']}; warm forward {r['forward_warm_s']:.2f} s)"


def _table(rows: list[dict]) -> str:
    head = (
        "| model | allocation | GMACs | params (M) | samples | forward (s) | prune (s) | prune / forward | "
        "MACs after | peak RSS (MB) | peak tmp (MB) | " + " | ".join(STAGE_COLS) + " | onnxruntime (s) | "
        "CPU user / system (s) | minor faults (M) | commit |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['allocation']} | error: {r['error']} |")
            continue
        t = r["timings"]
        stages = " | ".join(f"{t.get(k, 0.0):.1f}" for k in STAGE_COLS)
        out.append(
            f"| {r['model']}{_on(r)} | {r['allocation']} | {r['gmacs']:.2f} | {r['params_m']:.1f} | {r['samples']} | "
            f"{r['forward_s']:.1f} | {r['prune_s']:.1f} | **{r['prune_per_forward']:.1f}** | {r['macs_ratio']:.3f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_tmp_mb']:.0f} | {stages} | {_cpu(r)} | {r.get('commit', '?')} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v3_large,efficientnet_lite0,bert_base")
    ap.add_argument("--dir", default="/work/scale", help="where tools/export_scale_models.py wrote the models")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--ratios", type=float, default=0.3)
    ap.add_argument("--allocations", default="pro,uniform")
    ap.add_argument("--out", default="benchmarks/scale")
    ap.add_argument("--work", default="/tmp/onnx-poem-scale")
    ap.add_argument("--device", default="cpu", help="where the forward pass and the prune's runs go (cpu, cuda)")
    ap.add_argument("--resume", action="store_true", help="reuse cached rows")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a)))
        return
    rows = []
    for model in a.models.split(","):
        for alloc in a.allocations.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                "--models",
                model,
                "--allocations",
                alloc,
                "--dir",
                a.dir,
                "--shared",
                a.shared,
                "--samples",
                str(a.samples),
                "--ratios",
                str(a.ratios),
                "--work",
                a.work,
                "--device",
                a.device,
            ]
            on = "" if a.device == "cpu" else f".{a.device}"
            cached = Path(a.work) / f"{model}.{alloc}.{a.samples}.{a.ratios}{on}.json"
            row = run_row(cmd, cached, reuse=a.resume)
            row.setdefault("model", model)
            row.setdefault("allocation", alloc)
            rows.append(row)
            print(_table(rows[-1:]).splitlines()[-1], flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python tools/bench_scale.py " + " ".join(sys.argv[1:])
    beside(out, ".md").write_text(f"`{cmd}`\n\n" + _table(rows))
    beside(out, ".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
