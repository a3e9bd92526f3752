"""``--hidden F``: slice a fraction of a transformer's hidden size before the rest of a run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ..calibration.sources import CalibrationData
from ..graph import GraphView
from ..solvers.rotation import principal_basis
from .apply import slice_hidden
from .collect import stream_moments
from .stream import HiddenStream, NotSliceable, find_stream

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sliced:
    """What ``--hidden`` did: ``model`` is the sliced model (``None``: left as it was, ``reason`` says why).

    ``size``/``kept``: the hidden size before and after; ``dropped``: the fraction of the stream's normalised
    energy in the dropped rotated dimensions (:func:`onnx_poem.solvers.rotation.principal_basis`, averaged over
    the LayerNorms); ``norms``/``projected``: the LayerNorms rewritten, and how many got a back-projection."""

    model: onnx.ModelProto | None
    size: int = 0
    kept: int = 0
    dropped: float = 0.0
    norms: int = 0
    projected: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        if self.model is None:
            return {"sliced": False, "reason": self.reason}
        return {
            "sliced": True, "size": self.size, "kept": self.kept, "energy_dropped": self.dropped,
            "layernorms": self.norms, "back_projections": self.projected,
        }  # fmt: skip


#: how the stream is rotated: ``one``, the whole stream by one basis (no extra matrices; the default); ``norm``,
#: each normalisation's stretch by its own input's principal directions (the residual skips re-rotated, SliceGPT's
#: form)
ROTATIONS = ("one", "norm")


@dataclass(frozen=True)
class Measured:
    """A model's stream and its moments at every normalisation's input (:func:`measure`): what slicing at any
    fraction needs."""

    stream: HiddenStream
    moments: list[np.ndarray]


def measure(view: GraphView, data: CalibrationData, chunks: Sequence[np.ndarray]) -> Measured | NotSliceable:
    """The stream of ``view``'s model with its moments on the samples of ``chunks`` (the fitting samples: the choice
    of ``Q`` is fitting), or why it cannot be sliced (logged)."""
    stream = find_stream(view)
    if isinstance(stream, NotSliceable):
        logger.warning("--hidden: the hidden size is left as it is: %s", stream.reason)
        return stream
    return Measured(stream, stream_moments(view.model, stream, data, chunks))


def slice_run(
    view: GraphView, data: CalibrationData, chunks: Sequence[np.ndarray], fraction: float, rotation: str = "one"
) -> Sliced:
    """Remove ``round(fraction·D)`` of the hidden size of ``view``'s model, rotated by the principal directions of
    its stream on the samples of ``chunks`` (:func:`measure`, then :func:`slice_measured`)."""
    measured = measure(view, data, chunks)
    if isinstance(measured, NotSliceable):
        return Sliced(None, reason=measured.reason)
    return slice_measured(view.model, measured, fraction, rotation)


def slice_measured(model: onnx.ModelProto, measured: Measured, fraction: float, rotation: str = "one") -> Sliced:
    """Remove ``round(fraction·D)`` of the hidden size of ``model`` (the one ``measured`` was taken on).

    [R] ``rotation="one"`` (the default), measured against SliceGPT's ``norm``: per normalisation, 3-5x less of the
    normalised energy is dropped, and slicing alone kept more top-1 agreement on the CIFAR ViT at equal MACs (97.84 %
    at 0.698 of the MACs against about 97.6 % for one rotation), but the skips' ``(k, k)`` matrices cost 5-12 % of
    the MACs, which heads and neurons then pay for: with PRO at a MACs target (three seeds, benchmarks/hidden.md)
    ``norm`` kept 90.09 / 94.09 / 96.52 % agreement at 0.5 with 10 / 20 / 30 % of the hidden size sliced where
    ``one`` kept 96.03 / 96.80 / 97.51 %, and on the byte-level LLaMA slicing 20 % alone left 0.919 of the MACs
    with ``norm``, 0.826 with ``one``, at about the same accuracy (66.68 / 66.58 %, original 66.80 %).
    """
    stream, moments = measured.stream, measured.moments
    d = stream.size
    k = max(1, d - round(fraction * d))
    if rotation == "one":
        q, energy = principal_basis(moments)
        dropped = float(energy[k:].sum() / max(energy.sum(), 1e-300))
        sliced = slice_hidden(model, stream, q[:, :k])
    else:
        bases, drops = {}, []
        for anchor in dict.fromkeys(stream.segment.values()):
            q, energy = principal_basis(
                [m for n, m in zip(stream.norms, moments, strict=True) if n.match.input == anchor]
            )
            bases[anchor] = q[:, :k]
            drops.append(float(energy[k:].sum() / max(energy.sum(), 1e-300)))
        dropped = float(np.mean(drops))
        sliced = slice_hidden(model, stream, bases)
    projected = sum(n.project for n in stream.norms)
    logger.info(
        "--hidden: %d of %d hidden dimensions kept (%.2f %% of the normalised stream energy dropped), %d LayerNorms",
        k, d, 100 * dropped, len(stream.norms),
    )  # fmt: skip
    return Sliced(sliced, d, k, dropped, len(stream.norms), projected)
