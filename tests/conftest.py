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
