"""Check the benchmark models, original and pruned, on the runtimes users ship to.

Development tool; needs ``openvino`` (PyPI) beside onnx-poem, in its own environment::

    pip install openvino && pip install -e .
    python tools/check_runtimes.py --out benchmarks/runtimes.md [--ratio 0.3] [--runs 20]

For each model of ``../shared/docs/BENCHMARK.md``: prune it with the default settings at
``--ratio`` on its calibration split, then run the original and the pruned model on
onnxruntime's CPU provider (the reference), OpenVINO (CPU plugin) and onnxruntime's mobile
``.ort`` format (``onnxruntime.tools.convert_onnx_models_to_ort``, the file onnxruntime
Mobile loads) on samples of the evaluation split.  A row gives, per runtime, whether the
pruned model loads and runs, the largest relative difference of its outputs from the
reference (``max|a - b| / max|b|`` per output; the bar is 1e-3; the original's own difference in
brackets; OpenVINO is asked for f32 inference, not the bf16 it picks on CPUs that have it), the
metric of the pruned model
computed from that runtime's outputs, and the latency ratio pruned / original (batch
``--batch``, 2 threads, median ratio of ``--runs`` or more pairs of runs in alternating order).
TensorRT and onnxruntime CUDA (onnxruntime-gpu's providers) run where onnxruntime has them, e.g. on a
GPU machine with ``pip install onnxruntime-gpu openvino && pip install -e .``: the same command then
fills their rows; elsewhere they are marked not run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import tasks

from onnx_poem import prune
from onnx_poem.latency.runtimes import time_pairs

#: a loaded model: feed → outputs by name
Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _ort(path: Path) -> Runner:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 2, 1, 3
    # two sessions timed in turn on 2 cores: spinning workers of one slow the other (onnx_poem.latency.runtimes)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feed: dict(zip(names, sess.run(names, feed), strict=True))


def _openvino(path: Path) -> Runner:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}  # no bf16 where the CPU has it
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    names = [o.get_any_name() for o in compiled.outputs]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = compiled(feed)
        return {n: np.asarray(res[o]) for n, o in zip(names, compiled.outputs, strict=True)}

    return run


def _ort_format(path: Path, work: Path) -> Runner:
    out = work / f"{path.stem}_ort"
    subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(path),
                    "--output_dir", str(out)], check=True, capture_output=True)  # fmt: skip
    return _ort(next(p for p in out.glob("*.ort") if "with_runtime_opt" not in p.name))


def _gpu(kind: str) -> Callable[[Path, Path], Runner]:
    """onnxruntime's CUDA or TensorRT provider (``onnx_poem.latency.Runtime``: ``ort-cuda``, ``tensorrt``)."""

    def make(path: Path, work: Path) -> Runner:
        from onnx_poem.latency import Runtime

        runtime = Runtime.parse(kind)
        runtime.check()  # one line naming what is missing on a machine without the provider
        model = onnx.load(str(path))
        run = runtime.load(model)
        names = [o.name for o in model.graph.output]
        return lambda feed: dict(zip(names, run(feed), strict=True))

    return make


RUNTIMES: dict[str, Callable[[Path, Path], Runner]] = {
    "onnxruntime CPU": lambda p, w: _ort(p),
    "OpenVINO CPU": lambda p, w: _openvino(p),
    ".ort (onnxruntime Mobile)": _ort_format,
    "onnxruntime CUDA": _gpu("ort-cuda"),
    "TensorRT (onnxruntime)": _gpu("tensorrt"),
}
#: runtimes that need a GPU: rows say "not run" on a machine whose onnxruntime lacks the provider
GPU = {"onnxruntime CUDA": "CUDAExecutionProvider", "TensorRT (onnxruntime)": "TensorrtExecutionProvider"}


def _latency(a: Runner, b: Runner, feed: dict[str, np.ndarray], runs: int) -> float:
    """``b``'s latency over ``a``'s: median of per-pair ratios, pairs in alternating order (the product's
    :func:`onnx_poem.latency.runtimes.time_pairs`), at least ``runs`` pairs and 4 s."""
    return time_pairs(a, b, feed, runs=runs, min_seconds=4.0)


def _rel(outs: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(outs[n] - r)) / max(float(np.max(np.abs(r))), 1e-12)) for n, r in ref.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/runtimes.md")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--models", default="")
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    a = p.parse_args()
    shared = Path(a.shared)
    all_tasks = tasks(shared)
    keys = a.models.split(",") if a.models else list(all_tasks)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Generated by `python tools/check_runtimes.py --out {a.out} --ratio {a.ratio} --runs {a.runs} "
        f"--batch {a.batch}{' --models ' + a.models if a.models else ''}` at commit {commit} "
        f"(openvino, onnxruntime {ort.__version__}).  Pruned with the "
        f"default settings at `--ratio {a.ratio}` on each model's calibration split; outputs compared on "
        f"{a.batch} samples of the evaluation split with onnxruntime CPU's; metric: the benchmark's, from "
        "that runtime's outputs on the whole evaluation split; latency: pruned / original, batch "
        f"{a.batch}, 2 threads, median ratio of at least {a.runs} pairs of runs in alternating order (no "
        "spinning onnxruntime workers; a 2-core machine: read ratios, not absolute times).  TensorRT and "
        "onnxruntime CUDA: run only where onnxruntime has their providers (a GPU machine with onnxruntime-gpu).",
        "",
        "| model | MACs ratio | runtime | loads and runs | max rel. diff vs onnxruntime CPU (the original's) "
        "| metric original "
        "| metric pruned | latency pruned / original |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for key in keys:
            task = all_tasks[key]()
            src = shared / "models" / task.model_file
            pruned, rep = prune(str(src), ratio=a.ratio, calib=task.calib(512), seed=0)
            dst = work / f"{key}.pruned.onnx"
            onnx.save(pruned, str(dst))
            inputs = task.eval_inputs()
            feed = {k: v[: a.batch] for k, v in inputs.items()}
            ref, ref_orig = _ort(dst)(feed), _ort(src)(feed)
            for name, make in RUNTIMES.items():
                if name in GPU and GPU[name] not in ort.get_available_providers():
                    lines.append(f"| {key} | {rep.macs_ratio:.3f} | {name} | not run: no {GPU[name]} here | | | |")
                    continue
                try:
                    orig_run, pruned_run = make(src, work), make(dst, work)
                    rel, rel_orig = _rel(pruned_run(feed), ref), _rel(orig_run(feed), ref_orig)
                    metric_o = _metric(task, orig_run, inputs)
                    metric_p = _metric(task, pruned_run, inputs)
                    lat = _latency(orig_run, pruned_run, feed, a.runs)
                    row = f"yes | {rel:.1e} ({rel_orig:.1e}) | {metric_o:.2f} | {metric_p:.2f} | {lat:.2f}"
                except Exception as e:  # a runtime that refuses the model is the finding
                    row = f"**no**: {type(e).__name__}: {str(e).splitlines()[0][:150]} | | | |"
                lines.append(f"| {key} | {rep.macs_ratio:.3f} | {name} | {row} |")
                print(lines[-1], flush=True)
    Path(a.out).write_text("\n".join(lines) + "\n")


def _metric(task: object, run: Runner, inputs: dict[str, np.ndarray]) -> float:
    """The task's metric computed from ``run``'s outputs (through an onnxruntime-session-like adapter)."""
    names = list(run({k: v[:1] for k, v in inputs.items()}))

    class _Named:
        def __init__(self, name: str) -> None:
            self.name = name

    class _Adapter:
        def get_inputs(self) -> list[_Named]:
            return [_Named(n) for n in inputs]

        def get_outputs(self) -> list[_Named]:
            return [_Named(n) for n in names]

        def run(self, wanted: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            out = run(feed)
            return [out[n] for n in (wanted or names)]

    return float(task.evaluate(_Adapter()))  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
