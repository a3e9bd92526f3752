"""Three-way split of the calibration samples: fit, selection, verification.

* **fit**: the statistics (Gram matrices, cross terms, reservoirs) that the
  solvers fit weights to;
* **selection**: everything that picks between candidates after a fit: POEM's
  per-output choice between least squares and the post-activation fits, PRO's
  probes of the error at the model's output;
* **verification**: read by nothing but :func:`onnx_poem.verify.verify`, so the
  agreement it reports is an estimate on data the tool never fitted or chose on.

With ``--verify-data`` the verification set is a separate file and every
calibration sample goes to fit and selection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: fraction of the samples held out for verification, and its cap
VERIFY_FRACTION = 0.2
VERIFY_MAX = 256
#: fraction of the samples held out for selection, and its cap
SELECT_FRACTION = 0.125
SELECT_MAX = 256


@dataclass(frozen=True)
class Split:
    """Sorted sample indices of each part (disjoint; together ``0..n-1``; with ``--augment`` the fit part
    is followed by its augmented copies' indices ``n, n+1, ...``, :mod:`onnx_poem.calibration.augment`)."""

    fit: np.ndarray
    select: np.ndarray
    verify: np.ndarray


def split_samples(n: int, *, seed: int, verify: bool = True) -> Split:
    """Seeded split of ``n`` sample indices.

    ``verify = False`` (a separate verification set was given) puts nothing in
    the verification part.  The fit part always keeps at least one sample; the
    verification part is filled before the selection part when samples are few
    (an honest estimate matters more than one more candidate choice).
    """
    v = min(round(n * VERIFY_FRACTION), VERIFY_MAX) if verify else 0
    s = min(round(n * SELECT_FRACTION), SELECT_MAX)
    s = max(0, min(s, n - v - 1))
    v = max(0, min(v, n - s - 1))
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return Split(
        fit=np.sort(perm[v + s :]),
        select=np.sort(perm[v : v + s]),
        verify=np.sort(perm[:v]),
    )
