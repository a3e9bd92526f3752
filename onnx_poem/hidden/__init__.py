"""Slicing the hidden size of transformers (``--hidden``; pre-LN and post-LN): find the stream, measure it,
rotate and slice it (``../docs`` ALGORITHMS.md §10)."""

from .apply import slice_hidden
from .collect import stream_moments
from .run import Measured, Sliced, measure, slice_measured, slice_run
from .stream import HiddenStream, NotSliceable, find_stream

__all__ = [
    "HiddenStream",
    "Measured",
    "NotSliceable",
    "Sliced",
    "measure",
    "slice_measured",
    "find_stream",
    "slice_hidden",
    "slice_run",
    "stream_moments",
]
