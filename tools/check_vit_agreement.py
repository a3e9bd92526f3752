"""Prune the CIFAR ViT of tools/train_vit_cifar.py and report, per group, what was kept, and the top-1
agreement with the original on the evaluation split (benchmarks/vit_cifar.md).

    python tools/check_vit_agreement.py MODEL_DIR [--allocation pro|uniform] [--ratios 0.3,0.5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import _run_batched, session, tasks

from onnx_poem import prune


def _predict(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return _run_batched(session(model.SerializeToString(), 2), {"input": x}, batch=500)[0].argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--allocation", default="pro")
    ap.add_argument("--ratios", default="0.3,0.5")
    a = ap.parse_args()
    task = tasks(a.shared, a.models)["cifar10_vit"]()
    model = onnx.load(str(a.models / "cifar10_vit.onnx"))
    x = task.eval_inputs()["input"]
    y = np.load(a.shared / "data" / "cifar10_test_jpeg10k.npz")["y"][: len(x)]
    before = _predict(model, x)
    for ratio in (float(r) for r in a.ratios.split(",")):
        pruned, rep = prune(model, ratio=ratio, calib=task.calib(512), samples=512, allocation=a.allocation)
        after = _predict(pruned, x)
        print(
            f"{a.allocation} ratio {ratio}: MACs {rep.macs_after / rep.macs_before:.3f}, top-1 "
            f"{100 * np.mean(before == y):.2f} -> {100 * np.mean(after == y):.2f}, agreement "
            f"{100 * np.mean(before == after):.2f} %"
        )
        for g in rep.groups:
            print(f"  {g['group']}: {g['unit']} {g['kept']} / {g['channels']}")


if __name__ == "__main__":
    main()
