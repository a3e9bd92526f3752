"""Latency budgets measured on a runtime (``--target-latency``, ``--latency-on``, ``--batch``).

:mod:`.runtimes` compiles and times models on onnxruntime (CPU, CUDA, TensorRT) or OpenVINO;
:mod:`.widths` builds a model of given channel counts without calibration; :mod:`.table`
measures per-layer latency tables; :mod:`.budget` caches them, turns them into PRO's cost and
closes the budget by timing the whole model.
"""

from .budget import (
    Fit,
    LatencyCost,
    Timing,
    cache_dir,
    cache_key,
    fit_best,
    fit_target,
    probe_step,
    ratio_for_latency,
    save_cached,
)
from .runtimes import Runtime
from .table import LatencyTable, load_cached, measure_table

__all__ = [
    "Fit",
    "LatencyCost",
    "LatencyTable",
    "Runtime",
    "Timing",
    "cache_dir",
    "cache_key",
    "fit_best",
    "fit_target",
    "load_cached",
    "measure_table",
    "probe_step",
    "ratio_for_latency",
    "save_cached",
]
