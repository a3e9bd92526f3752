"""Consumer weights as the solvers see them, and back.

A consumer's *effective* weights ``W̄ = [W_eff, b_eff]: (m, n+1)`` include
everything linear between its input and the tensor the solvers fit:

    W_eff = a ⊙ (α · W_mat),   b_eff = a ⊙ (β · b) + c

with ``W_mat: (m, C·k)`` the stored weight in channel-major column order (conv
``W.reshape(m, -1)``, ConvTranspose its equivalent conv's kernel ``W[:, :, ::-1, ::-1]``
with the two channel axes swapped, Gemm ``B`` or ``Bᵀ``, MatMul ``Bᵀ``), ``α, β`` the Gemm
scalars, and ``a, c`` a directly following BatchNormalization folded to
``a = γ / sqrt(σ² + ε)``, ``c = β_bn − μ·a`` (identity when absent).
:func:`stored_arrays` inverts the map for the kept columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .coupling import Consumer
from .graph import GraphView


@dataclass(frozen=True)
class Affine:
    """Per-output affine ``y_eff = scale·(α·W x + β·b) + shift`` of a consumer."""

    scale: np.ndarray
    shift: np.ndarray


def _bn_affine(view: GraphView, c: Consumer, m: int) -> Affine:
    if c.bn is None:
        return Affine(np.ones(m), np.zeros(m))
    n = view.nodes[c.bn]
    gamma, beta, mean, var = (np.asarray(view.const(t), dtype=np.float64) for t in n.input[1:5])
    eps = float(view.attr(c.bn, "epsilon", 1e-5))
    a = gamma / np.sqrt(var + eps)
    return Affine(a, beta - mean * a)


def weight_matrix(view: GraphView, c: Consumer) -> np.ndarray:
    """Stored weight of ``c`` as ``(m, C·k)`` float64, channel-major columns."""
    w = np.asarray(view.const(c.weight), dtype=np.float64)
    if c.kind == "conv":
        return w.reshape(w.shape[0], -1)
    if c.kind == "convt":  # (C_in, C_out, kh, kw) → the equivalent conv's (C_out, C_in, kh, kw), flipped
        return np.ascontiguousarray(np.swapaxes(_flip(w), 0, 1)).reshape(w.shape[1], -1)
    if c.kind == "gemm" and c.trans_b:
        return w
    return w.T


def _flip(w: np.ndarray) -> np.ndarray:
    """``w`` reversed along its spatial axes (2 onwards): a kernel turned by 180 degrees (1-D or 2-D)."""
    return w[(slice(None), slice(None)) + (slice(None, None, -1),) * (w.ndim - 2)]


def stored_bias(view: GraphView, c: Consumer, m: int) -> np.ndarray:
    """Bias of ``c`` as ``(m,)`` float64 (zeros when the layer has none)."""
    if c.bias is None:
        return np.zeros(m)
    b = np.asarray(view.const(c.bias), dtype=np.float64).reshape(-1)
    return np.broadcast_to(b, (m,)).copy() if b.size in (1, m) else b[:m]


def effective(view: GraphView, c: Consumer) -> tuple[np.ndarray, Affine]:
    """``W̄ = [W_eff, b_eff]: (m, n+1)`` of consumer ``c`` and its output affine."""
    wm = weight_matrix(view, c)
    m = wm.shape[0]
    aff = _bn_affine(view, c, m)
    w_eff = aff.scale[:, None] * (c.alpha * wm)
    b_eff = aff.scale * (c.beta * stored_bias(view, c, m)) + aff.shift
    return np.concatenate([w_eff, b_eff[:, None]], axis=1), aff


def stored_arrays(
    view: GraphView, c: Consumer, w_bar: np.ndarray, keep: np.ndarray, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weight (original layout, ``len(keep)`` input channels) and ``(m,)`` bias to store for ``w_bar``.

    Args:
        w_bar: ``(m, len(keep)·k + 1)`` effective weights on the kept columns, bias last.
        keep: kept channel indices.
        channels: channel count before pruning.
    """
    orig = np.asarray(view.const(c.weight))
    wm0 = weight_matrix(view, c)
    m = wm0.shape[0]
    k = wm0.shape[1] // channels
    aff = _bn_affine(view, c, m)
    dead = aff.scale == 0
    scale = np.where(dead, 1.0, aff.scale)
    wm = w_bar[:, :-1] / scale[:, None] / c.alpha
    beta = c.beta if c.bias is not None else 1.0  # a bias the rewrite creates is added with beta 1
    b = (w_bar[:, -1] - aff.shift) / scale / beta
    cols = (keep[:, None] * k + np.arange(k)).reshape(-1)
    wm[dead] = wm0[dead][:, cols]  # a zero BN scale hides the layer: keep its weights
    b[dead] = stored_bias(view, c, m)[dead]
    if c.kind == "conv":
        w = wm.reshape(m, len(keep), *orig.shape[2:])
    elif c.kind == "convt":
        w = _flip(np.swapaxes(wm.reshape(m, len(keep), *orig.shape[2:]), 0, 1))
    elif c.kind == "gemm" and c.trans_b:
        w = wm
    else:
        w = wm.T
    return w.astype(orig.dtype), b.astype(orig.dtype)
