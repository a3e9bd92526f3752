"""Turn consumer inputs and outputs into sample matrices at sampled positions.

For a conv consumer with input ``x: (B, C, H, W)`` the sample of output
position ``(oh, ow)`` is the patch ``x[:, :, oh·sh + i·dh - pt, ow·sw + j·dw - pl]``
for ``i < kh, j < kw`` (zero outside the image), flattened channel-major to
``C·kh·kw`` values: exactly the columns that multiply ``W.reshape(m, -1)``.
Dense consumers read one row per sample (and per token for 3-D MatMul inputs).
"""

from __future__ import annotations

import math

import numpy as np

from ..coupling import Consumer


def resolve_pads(c: Consumer, height: int, width: int) -> tuple[int, int, int, int]:
    """ONNX pads ``(top, left, bottom, right)`` of conv consumer ``c``, resolving ``auto_pad``."""
    if c.auto_pad in ("NOTSET", ""):
        return (c.pads[0], c.pads[1], c.pads[2], c.pads[3]) if c.pads else (0, 0, 0, 0)
    if c.auto_pad == "VALID":
        return (0, 0, 0, 0)
    begin, end = [], []
    for size, k, s, d in zip((height, width), c.kernel, c.strides, c.dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if c.auto_pad == "SAME_UPPER" else big)
        end.append(big if c.auto_pad == "SAME_UPPER" else small)
    return (begin[0], begin[1], end[0], end[1])


def _transposed_geometry(c: Consumer, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """ConvTranspose ``c`` as a stride-1 conv: the zero-stuffed input's size and its (possibly negative) pads.

    ``y = ConvTranspose(x, W)`` equals a conv with stride 1, the same dilation and
    the flipped, channel-swapped kernel over ``x`` with ``s − 1`` zeros between
    pixels, padded by ``d(k − 1) − p_begin`` before and ``d(k − 1) − p_end + output_padding`` after.
    """
    size = ((h - 1) * c.strides[0] + 1, (w - 1) * c.strides[1] + 1)
    pt, pl, pb, pr = c.pads if c.pads else (0, 0, 0, 0)
    ext = [d * (k - 1) for d, k in zip(c.dilations, c.kernel, strict=True)]
    op = c.output_padding or (0, 0)
    return size, (ext[0] - pt, ext[1] - pl, ext[0] - pb + op[0], ext[1] - pr + op[1])


def positions_of(c: Consumer, in_shape: tuple[int, ...]) -> int:
    """Number of output positions per sample of consumer ``c`` for an input of ``in_shape``."""
    if c.kind in ("conv", "convt") and len(in_shape) == 3:  # 1-D: a 2-D conv over height 1
        in_shape = (in_shape[0], in_shape[1], 1, in_shape[2])
    if c.kind == "convt":
        (h, w), (pt, pl, pb, pr) = _transposed_geometry(c, in_shape[2], in_shape[3])
        ho = h + pt + pb - c.dilations[0] * (c.kernel[0] - 1)
        wo = w + pl + pr - c.dilations[1] * (c.kernel[1] - 1)
        return int(ho * wo)
    if c.kind == "conv":
        _, _, h, w = in_shape
        pt, pl, pb, pr = resolve_pads(c, h, w)
        ho = (h + pt + pb - c.dilations[0] * (c.kernel[0] - 1) - 1) // c.strides[0] + 1
        wo = (w + pl + pr - c.dilations[1] * (c.kernel[1] - 1) - 1) // c.strides[1] + 1
        return int(ho * wo)
    return int(np.prod(in_shape[1:-1], dtype=np.int64)) if len(in_shape) > 2 else 1


def sample_positions(
    total: int, per_sample: int, batch: int, rng: np.random.Generator, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(batch, P)`` distinct positions out of ``total`` per sample, and which of them are valid.

    All positions are taken when ``total <= per_sample``.  With ``valid: (batch,
    total)`` (e.g. a transformer's attention mask) valid positions are drawn
    first; the returned ``(batch, P)`` flags mark the ones to keep.
    """
    if total <= per_sample:
        pos = np.broadcast_to(np.arange(total), (batch, total)).copy()
    else:
        keys = rng.random((batch, total))
        if valid is not None:
            keys = keys + 2.0 * ~valid
        pos = np.sort(np.argpartition(keys, per_sample - 1, axis=1)[:, :per_sample], axis=1)
    ok = np.take_along_axis(valid, pos, axis=1) if valid is not None else np.ones(pos.shape, dtype=bool)
    return pos, ok


def input_samples(c: Consumer, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Sample matrix ``(B·P, n)`` of consumer ``c``'s input ``x`` at positions ``pos: (B, P)``."""
    if c.kind not in ("conv", "convt"):
        if x.ndim == 2:
            return x
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        return np.take_along_axis(flat, pos[:, :, None], axis=1).reshape(-1, x.shape[-1])
    if x.ndim == 3:  # 1-D: a 2-D conv over height 1
        x = x[:, :, None, :]
    b, ch, h, w = x.shape
    kh, kw = c.kernel
    if c.kind == "convt":
        (h, w), (pt, pl, pb, pr) = _transposed_geometry(c, h, w)
        stuffed = np.zeros((b, ch, h, w), dtype=x.dtype)
        stuffed[:, :, :: c.strides[0], :: c.strides[1]] = x
        x = stuffed[:, :, max(-pt, 0) : h - max(-pb, 0), max(-pl, 0) : w - max(-pr, 0)]  # negative pads crop
        h, w = x.shape[2:]
        pt, pl, pb, pr = (max(p, 0) for p in (pt, pl, pb, pr))
        strides: tuple[int, ...] = (1, 1)
    else:
        pt, pl, pb, pr = resolve_pads(c, h, w)
        strides = c.strides
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any((pt, pl, pb, pr)) else x
    wo = (w + pl + pr - c.dilations[1] * (kw - 1) - 1) // strides[1] + 1
    oh, ow = np.divmod(pos, wo)  # (B, P)
    rows = oh[:, :, None] * strides[0] + np.arange(kh) * c.dilations[0]  # (B, P, kh)
    cols = ow[:, :, None] * strides[1] + np.arange(kw) * c.dilations[1]  # (B, P, kw)
    bidx = np.arange(b)[:, None, None, None]
    patches = xp[bidx, :, rows[:, :, :, None], cols[:, :, None, :]]  # (B, P, kh, kw, C)
    return patches.transpose(0, 1, 4, 2, 3).reshape(b * pos.shape[1], ch * kh * kw)


def output_samples(c: Consumer, y: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Rows ``(B·P, m)`` of consumer ``c``'s output (or any tensor shaped like it) at ``pos``."""
    if c.kind in ("conv", "convt"):
        flat = y.reshape(y.shape[0], y.shape[1], -1)  # (B, m, Ho·Wo)
        return np.take_along_axis(flat, pos[:, None, :], axis=2).transpose(0, 2, 1).reshape(-1, y.shape[1])
    if y.ndim == 2:
        return y
    flat = y.reshape(y.shape[0], -1, y.shape[-1])
    return np.take_along_axis(flat, pos[:, :, None], axis=1).reshape(-1, y.shape[-1])
