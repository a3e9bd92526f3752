"""The runtimes a latency budget is measured on, and how a model is timed there.

``--latency-on`` names one: ``ort-cpu[:threads]`` (onnxruntime's CPU provider),
``openvino[:threads]`` (OpenVINO's CPU plugin, f32; needs the ``openvino`` package),
``ort-cuda`` and ``tensorrt`` (onnxruntime's CUDA and TensorRT providers; need
``onnxruntime-gpu`` and a GPU).  Threads default to the machine's cores.  A runtime
that is not installed is a :class:`~onnx_poem.errors.UsageError` naming the package.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import UsageError
from ..external import stub_weights

#: a loaded model: feed → outputs (in the model's output order)
Runner = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]

KINDS = ("ort-cpu", "openvino", "ort-cuda", "tensorrt")
_PROVIDERS = {"ort-cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class Runtime:
    """A runtime to time models on: ``kind`` (one of :data:`KINDS`) with ``threads`` CPU threads."""

    kind: str = "ort-cpu"
    threads: int = 0

    @classmethod
    def parse(cls, spec: str) -> Runtime:
        """``ort-cpu``, ``ort-cpu:2``, ``openvino:4``, ``ort-cuda``, ``tensorrt``."""
        kind, _, threads = spec.strip().partition(":")
        if kind not in KINDS:
            raise UsageError(f"--latency-on must be one of {', '.join(KINDS)} (optionally :threads), got {spec!r}")
        if threads and not (threads.isdigit() and int(threads) >= 1):
            raise UsageError(f"--latency-on threads must be a positive integer, got {spec!r}")
        return cls(kind, int(threads) if threads else (os.cpu_count() or 1))

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.threads}" if self.kind in ("ort-cpu", "openvino") else self.kind

    def check(self) -> None:
        """Raise :class:`UsageError` (one line) when this runtime is not available here."""
        if self.kind == "openvino":
            try:
                import openvino  # noqa: F401
            except ImportError:
                raise UsageError("--latency-on openvino needs the openvino package (pip install openvino)") from None
        elif self.kind in _PROVIDERS and _PROVIDERS[self.kind] not in ort.get_available_providers():
            raise UsageError(
                f"--latency-on {self.kind}: onnxruntime here has no {_PROVIDERS[self.kind]} "
                "(install onnxruntime-gpu on a machine with a GPU)"
            )

    def load(self, model: onnx.ModelProto) -> Runner:
        """``model`` compiled for this runtime."""
        if self.kind == "openvino":
            return _openvino(model, self.threads)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # measured: with spinning workers, two sessions timed in turn on 2 cores contend (the same pair's
        # ratio ranged 0.6-1.1 over repeats, the original ran 16 ms instead of 8); without, within a few %
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        stub, names, arrays = stub_weights(model)
        if names:
            so.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays])
        providers = [_PROVIDERS[self.kind], "CPUExecutionProvider"] if self.kind in _PROVIDERS else None
        sess = ort.InferenceSession(stub.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"])
        return lambda feed: sess.run(None, dict(feed))


def _openvino(model: onnx.ModelProto, threads: int) -> Runner:
    import openvino as ov  # an optional runtime: checked by Runtime.check

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    with tempfile.TemporaryDirectory(prefix="onnx-poem-ov-") as tmp:  # OpenVINO reads ONNX from a file
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    return lambda feed: [np.asarray(v) for v in compiled(dict(feed)).values()]


def time_one(run: Runner, feed: Mapping[str, np.ndarray], *, runs: int = 5, min_seconds: float = 0.05) -> float:
    """Median seconds per run of ``run(feed)`` after one warm-up: at least ``runs`` runs and at least
    ``min_seconds`` in all (at most 200 runs)."""
    run(feed)
    times: list[float] = []
    total = 0.0
    while len(times) < runs or (total < min_seconds and len(times) < 200):
        t0 = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - t0)
        total += times[-1]
    return statistics.median(times)


def time_pairs(
    a: Runner, b: Runner, feed: Mapping[str, np.ndarray], *, runs: int = 20, min_seconds: float = 1.0
) -> float:
    """``b``'s latency over ``a``'s: the median of per-pair ratios, the two run back to back in alternating
    order (a change in the machine's load hits both of a pair), after three warm-up runs each; at least
    ``runs`` pairs and at least ``min_seconds`` in all (at most 500 pairs)."""
    for _ in range(3):
        a(feed)
        b(feed)
    ratios: list[float] = []
    total = 0.0
    while len(ratios) < runs or (total < min_seconds and len(ratios) < 500):
        t = {}
        for key, run in (("a", a), ("b", b)) if len(ratios) % 2 == 0 else (("b", b), ("a", a)):
            t0 = time.perf_counter()
            run(feed)
            t[key] = time.perf_counter() - t0
        ratios.append(t["b"] / t["a"])
        total += t["a"] + t["b"]
    return statistics.median(ratios)
