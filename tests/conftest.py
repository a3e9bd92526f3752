"""Shared fixtures: paths to ../shared (tests that need it skip when absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))

CIFAR_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
CIFAR_STD = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]


def shared_file(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"../shared not available ({rel} missing)")
    return p


@pytest.fixture(scope="session")
def cifar() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 JPEG CIFAR-10 test images as float32 NCHW 0..255, and labels."""
    z = np.load(shared_file("data/cifar10_test_jpeg10k.npz"))
    return np.ascontiguousarray(z["x"].astype(np.float32).transpose(0, 3, 1, 2)), z["y"]


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """A folder with the conv_chain test model ``m.onnx`` and 32 calibration samples ``c.npz``."""
    import onnx

    from models import BUILDERS, inputs_for

    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 32))
    return tmp_path


@pytest.fixture()
def external(tmp_path: Path) -> Path:
    """A folder with conv_chain stored with its weights in an external-data file ``m.data`` beside
    ``m.onnx``, and 32 calibration samples ``c.npz``."""
    import onnx

    from models import BUILDERS, inputs_for

    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 32))
    return tmp_path
