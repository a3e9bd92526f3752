"""Damped symmetric solves with a logged fallback.

Damping ``G + δI`` with ``δ = λ·mean(diag G)`` is a ridge penalty; paired with
``P + δ·W0`` it pulls the solution toward ``W0`` (the original weights), not
toward zero: ``W = (P + δW0)(G + δI)⁻¹`` minimises ``‖Y − WX‖² + δ‖W − W0‖²``.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

logger = logging.getLogger(__name__)


def damping(G: np.ndarray, lam: float) -> float:
    """``δ = λ·mean(diag G)`` (1e-12 floor so an all-zero Gram stays invertible)."""
    return float(lam * max(float(np.mean(np.diag(G))), 1e-12))


def spd_inverse(G: np.ndarray, fallbacks: list[str] | None = None) -> np.ndarray:
    """Inverse of a symmetric positive definite ``G: (n, n)``.

    LAPACK ``potrf`` + ``potri`` (the inverse straight from the factor, half the work of
    solving against the identity); the result is exactly symmetric.  If the factorisation
    fails (a Gram accumulated in float32 can be indefinite by rounding), it is retried with
    a jitter of ``10⁻⁶, 10⁻⁵, 10⁻⁴ × mean(diag G)`` on the diagonal, then the pseudo-inverse.
    """
    G = np.asarray(G, dtype=np.float64)
    scale = max(float(np.mean(np.abs(np.diag(G)))), 1e-300) if G.size else 1.0
    for jitter in (0.0, 1e-6, 1e-5, 1e-4):
        A = G + jitter * scale * np.eye(G.shape[0]) if jitter else G
        U, info = lapack.dpotrf(A, lower=0, clean=0)
        if info == 0 and np.isfinite(U).all():
            inv, info = lapack.dpotri(U, lower=0)
            if info == 0:
                if jitter:
                    logger.debug("Cholesky needed a diagonal jitter of %g x mean(diag)", jitter)
                upper = np.triu(inv)
                return upper + np.triu(upper, 1).T
        if not np.isfinite(G).all():
            break
    if fallbacks is not None:
        fallbacks.append("Cholesky failed; used the pseudo-inverse")
    logger.warning("Cholesky factorisation failed; falling back to the pseudo-inverse")
    inv = np.linalg.pinv(G, hermitian=True)
    return 0.5 * (inv + inv.T)


def spd_solve(A: np.ndarray, B: np.ndarray, fallbacks: list[str] | None = None) -> np.ndarray:
    """``B A⁻¹`` for a symmetric positive definite ``A: (n, n)`` and ``B: (m, n)`` → ``(m, n)``.

    Cholesky (``n³/3 + 2n²m``, less than forming the inverse when ``m < n``); least squares if it fails.
    """
    try:
        c = scipy.linalg.cho_factor(A, lower=False, check_finite=False)
        return np.asarray(scipy.linalg.cho_solve(c, B.T, check_finite=False).T)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
        pass
    if fallbacks is not None:
        fallbacks.append("Cholesky failed; used least squares (lstsq)")
    logger.warning("Cholesky solve failed; falling back to lstsq")
    return np.asarray(np.linalg.lstsq(A, B.T, rcond=None)[0].T)


def ridge_solve(
    G: np.ndarray, P: np.ndarray, W0: np.ndarray, delta: float, fallbacks: list[str] | None = None
) -> np.ndarray:
    """``W = (P + δW0)(G + δI)⁻¹`` for ``G: (n, n)``, ``P, W0: (m, n)`` → ``(m, n)``."""
    return spd_solve(G + delta * np.eye(G.shape[0]), P + delta * W0, fallbacks)
