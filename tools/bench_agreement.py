"""Top-1 agreement with the original on the evaluation split (per sample; per token for a language model's
logits), for the pruned models a ``tools/bench.py`` run saved in its ``--work`` folder
(``MODEL.METHOD.RATIO.SEED.onnx``): a finer measure than accuracy when the differences between methods are under
the evaluation split's noise (benchmarks/hidden.md).

    python tools/bench_agreement.py WORK --model cifar10_vit [--extra DIR] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import _run_batched, session, tasks


def _predict(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    return _run_batched(session(str(path), 2), inputs, batch=500)[0].argmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--extra", type=Path)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    a = ap.parse_args()
    all_tasks = tasks(a.shared, a.extra)
    task = all_tasks[a.model]()
    inputs = task.eval_inputs()
    model_dir = a.extra if a.extra is not None and (a.extra / task.model_file).exists() else a.shared / "models"
    before = _predict(model_dir / task.model_file, inputs)  # an absolute model_file is read as it is
    rows: dict[tuple[str, str], list[float]] = defaultdict(list)
    for path in sorted(a.work.glob(f"{a.model}.*.onnx")):
        method, whole, frac, _seed = path.name[len(a.model) + 1 : -len(".onnx")].rsplit(".", 3)
        if method == "original":
            continue
        ratio = f"{whole}.{frac}"
        rows[(method, ratio)].append(100.0 * float(np.mean(_predict(path, inputs) == before)))
    print("| method | ratio | top-1 agreement % (per seed) | mean |")
    print("|---|---|---|---|")
    for (method, ratio), values in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        per = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {method} | {ratio} | {per} | {statistics.mean(values):.2f} |")


if __name__ == "__main__":
    main()
