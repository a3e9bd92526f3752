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


def spd_inverse(G: np.ndarray, fallbacks: list[str] | None = None, *, overwrite: bool = False) -> np.ndarray:
    """Inverse of a symmetric positive definite ``G: (n, n)``.

    LAPACK ``potrf`` + ``potri`` (the inverse straight from the factor, half the work of
    solving against the identity) in a single ``n x n`` buffer: ``G`` itself with
    ``overwrite`` (the caller's array then holds the result), else one copy.  The result is
    exactly symmetric.  If the factorisation fails (a Gram accumulated in float32 can be
    indefinite by rounding), the matrix is restored from the triangle LAPACK did not touch
    and retried with a jitter of ``10⁻⁶, 10⁻⁵, 10⁻⁴ × mean(diag G)`` on the diagonal, then
    the pseudo-inverse is taken.
    """
    G = np.asarray(G, dtype=np.float64)
    n = G.shape[0]
    diag = np.diag(G).copy()
    scale = max(float(np.mean(np.abs(diag))), 1e-300) if n else 1.0
    buf = G if overwrite and G.flags.c_contiguous else np.array(G, order="C")
    f = buf.T  # Fortran-ordered view of the symmetric matrix: LAPACK works on it in place
    for jitter in (0.0, 1e-6, 1e-5, 1e-4):
        if jitter:
            symmetrize(f, upper=False)  # restore the triangle potrf overwrote
            f[np.diag_indices(n)] = diag + jitter * scale
        U, info = lapack.dpotrf(f, lower=0, clean=0, overwrite_a=1)
        if info == 0 and np.isfinite(np.diag(U)).all():
            inv, info = lapack.dpotri(U, lower=0, overwrite_c=1)
            if info == 0:
                if jitter:
                    logger.debug("Cholesky needed a diagonal jitter of %g x mean(diag)", jitter)
                inv = symmetrize(inv, upper=True)
                return inv.T if not inv.flags.c_contiguous else inv  # symmetric: the C-ordered view
        if not np.isfinite(diag).all():
            break
    if fallbacks is not None:
        fallbacks.append("Cholesky failed; used the pseudo-inverse")
    logger.warning("Cholesky factorisation failed; falling back to the pseudo-inverse")
    symmetrize(f, upper=False)
    f[np.diag_indices(n)] = diag
    inv = np.linalg.pinv(f, hermitian=True)
    return 0.5 * (inv + inv.T)


def symmetrize(a: np.ndarray, *, upper: bool, block: int = 512) -> np.ndarray:
    """Make ``a: (n, n)`` symmetric in place from its upper (or lower) triangle, in blocks (no ``n²`` temporary)."""
    n = a.shape[0]
    for i in range(0, n, block):
        j = min(i + block, n)
        if upper:
            a[j:, i:j] = a[i:j, j:].T
        else:
            a[i:j, j:] = a[j:, i:j].T
        sub = a[i:j, i:j]
        tri = np.tril_indices(j - i, -1) if upper else np.triu_indices(j - i, 1)
        sub[tri] = sub.T[tri]
    return a


def spd_solve(
    A: np.ndarray, B: np.ndarray, fallbacks: list[str] | None = None, *, overwrite: bool = False
) -> np.ndarray:
    """``B A⁻¹`` for a symmetric positive definite ``A: (n, n)`` and ``B: (m, n)`` → ``(m, n)``.

    Cholesky (``n³/3 + 2n²m``, less than forming the inverse when ``m < n``), in place on ``A``
    with ``overwrite`` (the caller's array is then destroyed); least squares if it fails (after
    restoring ``A`` from the triangle the factorisation did not touch).
    """
    in_place = overwrite and A.flags.c_contiguous and A.dtype == np.float64
    diag = np.diag(A).copy() if in_place else None
    try:
        # the transpose of a symmetric C-ordered matrix is the same matrix, Fortran-ordered: factored in place
        c = scipy.linalg.cho_factor(A.T if in_place else A, lower=False, overwrite_a=in_place, check_finite=False)
        return np.asarray(scipy.linalg.cho_solve(c, B.T, check_finite=False).T)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
        pass
    if diag is not None:  # potrf wrote the upper triangle of Aᵀ (the lower one of A) and the diagonal
        symmetrize(A.T, upper=False)
        A[np.diag_indices(A.shape[0])] = diag
    if fallbacks is not None:
        fallbacks.append("Cholesky failed; used least squares (lstsq)")
    logger.warning("Cholesky solve failed; falling back to lstsq")
    return np.asarray(np.linalg.lstsq(A, B.T, rcond=None)[0].T)


def ridge_solve(
    G: np.ndarray,
    P: np.ndarray,
    W0: np.ndarray,
    delta: float,
    fallbacks: list[str] | None = None,
    *,
    overwrite: bool = False,
) -> np.ndarray:
    """``W = (P + δW0)(G + δI)⁻¹`` for ``G: (n, n)``, ``P, W0: (m, n)`` → ``(m, n)``.

    With ``overwrite`` ``G`` (a caller's temporary) is damped and factored in place.
    """
    A = G if overwrite and G.flags.c_contiguous else np.array(G, dtype=np.float64)
    A[np.diag_indices(A.shape[0])] += delta
    return spd_solve(A, P + delta * W0, fallbacks, overwrite=True)
