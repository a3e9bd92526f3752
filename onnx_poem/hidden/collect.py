"""The stream's second moments at every LayerNorm's input, from the original model on calibration samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ..calibration.collect import token_mask
from ..calibration.sources import CalibrationData
from ..graph import session
from ..solvers.rotation import centred_moment
from .stream import HiddenStream


def stream_moments(
    model: onnx.ModelProto, stream: HiddenStream, data: CalibrationData, chunks: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """One centred second moment ``(D, D)`` float64 per LayerNorm of ``stream`` (:func:`centred_moment`), over
    the samples of ``chunks`` (one onnxruntime run each); padding tokens (an integer ``*mask*`` input's zeros)
    are left out.  Memory: the moments and one batch's activations."""
    names = list(dict.fromkeys(n.match.input for n in stream.norms))
    sess = session(model, outputs=names)
    moments = {n: np.zeros((stream.size, stream.size)) for n in names}
    for idx in chunks:
        feed = data.feed(idx)
        mask = token_mask(feed)
        for name, value in zip(names, sess.run(names, feed), strict=True):
            rows = np.moveaxis(value, stream.tensors[name], -1)
            if mask is not None and rows.ndim == 3 and rows.shape[:2] == mask.shape:
                rows = rows[mask]
            moments[name] += centred_moment(rows.reshape(-1, stream.size), centre=stream.centred)
    return [moments[n.match.input] for n in stream.norms]
