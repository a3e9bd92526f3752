"""Build the README demo assets in models/ from ../shared (development tool).

* ``models/cifar10_resnet20.onnx``: copied from ../shared/models (BSD-2-Clause, see models/NOTICE).
* ``models/cifar10_calib256.npz``: the first 256 images of the calibration split of
  BENCHMARK.md (``cifar10_test_jpeg10k.npz`` x[5000:5256]), preprocessed as the
  model expects (x/255, ImageNet mean/std, NCHW float32), under key ``input``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(shared: Path = ROOT.parent / "shared") -> None:
    out = ROOT / "models"
    out.mkdir(exist_ok=True)
    shutil.copyfile(shared / "models" / "cifar10_resnet20.onnx", out / "cifar10_resnet20.onnx")
    z = np.load(shared / "data" / "cifar10_test_jpeg10k.npz")
    x = z["x"][5000:5256].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]
    np.savez_compressed(out / "cifar10_calib256.npz", input=((x - mean) / std).astype(np.float32))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared")
