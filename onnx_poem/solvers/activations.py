"""Elementwise activations as seen by the solvers: value, derivative, linear pieces.

``piecewise(kind, params)`` returns the linear pieces ``(lo, hi, slope, offset)``
of a piecewise-linear activation (``f(u) = slope·u + offset`` on ``[lo, hi]``),
or ``None`` for smooth ones; POEM's relaxation step uses the pieces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import erf, expit

Piece = tuple[float, float, float, float]

KINDS = (
    "identity",
    "relu",
    "leaky_relu",
    "clip",
    "sigmoid",
    "tanh",
    "hard_sigmoid",
    "hard_swish",
    "softplus",
    "elu",
    "gelu",
)


def apply(kind: str, params: Sequence[float], y: np.ndarray) -> np.ndarray:
    """``f(y)`` elementwise."""
    if kind == "identity":
        return y
    if kind == "relu":
        return np.maximum(y, 0)
    if kind == "leaky_relu":
        return np.where(y > 0, y, params[0] * y)
    if kind == "clip":
        return np.clip(y, params[0], params[1])
    if kind == "sigmoid":
        return expit(y)
    if kind == "tanh":
        return np.tanh(y)
    if kind == "hard_sigmoid":
        return np.clip(params[0] * y + params[1], 0, 1)
    if kind == "hard_swish":
        return y * np.clip(y / 6 + 0.5, 0, 1)
    if kind == "softplus":
        return np.logaddexp(0, y)
    if kind == "elu":
        return np.where(y > 0, y, params[0] * np.expm1(np.minimum(y, 0)))
    if kind == "gelu":
        return 0.5 * y * (1 + erf(y / np.sqrt(2)))
    raise ValueError(f"unknown activation {kind!r}")


def derivative(kind: str, params: Sequence[float], y: np.ndarray) -> np.ndarray:
    """``f'(y)`` elementwise (one-sided at kinks)."""
    if kind == "identity":
        return np.ones_like(y)
    if kind == "relu":
        return (y > 0).astype(y.dtype)
    if kind == "leaky_relu":
        return np.where(y > 0, 1.0, params[0]).astype(y.dtype)
    if kind == "clip":
        return ((y > params[0]) & (y < params[1])).astype(y.dtype)
    if kind == "sigmoid":
        s = expit(y)
        return s * (1 - s)
    if kind == "tanh":
        return 1 - np.tanh(y) ** 2
    if kind == "hard_sigmoid":
        v = params[0] * y + params[1]
        return np.where((v > 0) & (v < 1), params[0], 0.0).astype(y.dtype)
    if kind == "hard_swish":
        return np.where(y <= -3, 0.0, np.where(y >= 3, 1.0, (2 * y + 3) / 6)).astype(y.dtype)
    if kind == "softplus":
        return expit(y)
    if kind == "elu":
        return np.where(y > 0, 1.0, params[0] * np.exp(np.minimum(y, 0))).astype(y.dtype)
    if kind == "gelu":
        return 0.5 * (1 + erf(y / np.sqrt(2))) + y * np.exp(-0.5 * y * y) / np.sqrt(2 * np.pi)
    raise ValueError(f"unknown activation {kind!r}")


def piecewise(kind: str, params: Sequence[float]) -> list[Piece] | None:
    """Linear pieces of a piecewise-linear activation, ``None`` if it is smooth."""
    inf = float("inf")
    if kind == "identity":
        return [(-inf, inf, 1.0, 0.0)]
    if kind == "relu":
        return [(-inf, 0.0, 0.0, 0.0), (0.0, inf, 1.0, 0.0)]
    if kind == "leaky_relu":
        return [(-inf, 0.0, float(params[0]), 0.0), (0.0, inf, 1.0, 0.0)]
    if kind == "clip":
        lo, hi = float(params[0]), float(params[1])
        pieces = [(lo, hi, 1.0, 0.0)]
        if lo > -inf:
            pieces.append((-inf, lo, 0.0, lo))
        if hi < inf:
            pieces.append((hi, inf, 0.0, hi))
        return pieces
    if kind == "hard_sigmoid":
        a, b = float(params[0]), float(params[1])
        return [(-inf, -b / a, 0.0, 0.0), (-b / a, (1 - b) / a, a, b), ((1 - b) / a, inf, 0.0, 1.0)]
    return None
