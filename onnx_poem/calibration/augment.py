"""Seeded augmented copies of the fitting images (``--augment N``): more statistics from few images.

A 1000-class model calibrated on 500 images sees each class about once, and a layer's
Gram is built from a few hundred images' positions.  Each of the ``N`` copies of a
fitting image is resampled (bilinear, borders reflected) through the map

    x_out(o) = x(c + (o − c)/s − t),    s ~ U[1 − SCALE, 1 + SCALE],  t ~ U[−SHIFT, SHIFT]·(H, W)

(``c`` the image centre: a zoom by ``s`` about it, then a shift by ``t``) and flipped
left-right with probability 1/2; every draw is seeded by the run's seed and the copy's
index.  Only image inputs are transformed (rank-4 float inputs with 1, 3 or 4 channels
first or last); any other input of the sample is copied as it is.

Copies are *fitting* samples only: the selection and verification samples stay real
images, and no copy of one of them is made, so the held-out checks stay independent of
what was fitted.  The copies are written once to a memory-mapped file in the run's
temporary folder (the calibration passes re-read every batch for every group), so they
take disk, not memory.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import UsageError
from .sources import CalibrationData
from .store import SCAN_ROWS, Array, open_npy

#: largest shift, as a fraction of the image's height and width
SHIFT = 0.125
#: largest relative zoom in or out
SCALE = 0.1
#: most copies per fitting image
MAX_COPIES = 16


def image_axes(sample_shape: tuple[int, ...]) -> int | None:
    """Channel axis of one sample ``(C, H, W)`` → 0 or ``(H, W, C)`` → 2; ``None``: not an image."""
    if len(sample_shape) != 3:
        return None
    first, last = sample_shape[0] in (1, 3, 4), sample_shape[2] in (1, 3, 4)
    if first and not last:
        return 0
    if last and not first:
        return 2
    return None


def transform(x: np.ndarray, channel_axis: int, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of image ``x`` (channel axis ``channel_axis``; see the module docstring)."""
    img = np.moveaxis(x, channel_axis, 0).astype(np.float64)
    h, w = img.shape[1:]
    s = rng.uniform(1.0 - SCALE, 1.0 + SCALE)
    t = rng.uniform(-SHIFT, SHIFT, 2) * (h, w)
    flip = rng.random() < 0.5
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - centre / s - t
    out = np.stack(
        [ndimage.affine_transform(p, [1.0 / s, 1.0 / s], offset=offset, order=1, mode="reflect") for p in img]
    )
    if flip:
        out = out[:, :, ::-1]
    return np.moveaxis(out, 0, channel_axis).astype(x.dtype)


def augment_fit(
    data: CalibrationData, fit: np.ndarray, copies: int, seed: int, workdir: Path
) -> tuple[CalibrationData, np.ndarray]:
    """``data`` with ``copies`` augmented copies of every sample in ``fit`` appended, and their indices.

    The result's samples ``0 .. len(data) − 1`` are ``data``'s own; copy ``j`` (index
    ``len(data) + j``) is of sample ``fit[j // copies]``, drawn with seed ``[seed, 11, j]``.  Each input's
    samples, ``data``'s own and the copies, are one memory-mapped ``.npy`` in ``workdir`` (so that a feed
    indexes one array).

    Raises:
        UsageError: no input of ``data`` is an image.
    """
    images = {
        k: axis
        for k, v in data.arrays.items()
        if data.axes.get(k, 0) == 0 and v.dtype.kind == "f" and (axis := image_axes(tuple(v.shape[1:]))) is not None
    }
    if not images:
        raise UsageError(
            "--augment needs an image input (rank 4, 1, 3 or 4 channels first or last); this model has none"
        )
    n = len(data)
    sources = np.repeat(np.asarray(fit, dtype=np.int64), copies)
    arrays: dict[str, Array] = {}
    for i, (k, v) in enumerate(data.arrays.items()):
        out = np.lib.format.open_memmap(
            workdir / f"augmented_{i}.npy", mode="w+", dtype=v.dtype, shape=(n + len(sources), *v.shape[1:])
        )
        for s in range(0, n, SCAN_ROWS):
            out[s : min(s + SCAN_ROWS, n)] = v[np.arange(s, min(s + SCAN_ROWS, n))]
        for j, src in enumerate(sources):
            # the same seed for every image input of a sample: the same draws, the same transform
            out[n + j] = transform(v[src], images[k], np.random.default_rng([seed, 11, j])) if k in images else v[src]
        out.flush()
        del out  # read back batch by batch (calibration.store), not through the mapping's resident pages
        arrays[k] = open_npy(workdir / f"augmented_{i}.npy", min_bytes=0) or np.load(workdir / f"augmented_{i}.npy")
    labels = None if data.labels is None else np.concatenate([data.labels, data.labels[sources]])
    return replace(data, arrays=arrays, labels=labels), n + np.arange(len(sources))
