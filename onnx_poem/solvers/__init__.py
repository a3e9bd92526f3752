"""Numerical core: selection and reconstruction. Pure NumPy/SciPy, no ONNX."""

from .greedy import QuadProblem, greedy_eliminate
from .reconstruct import LayerData, Reconstruction, Samples, kept_columns, reconstruct, relative_errors
from .select import METHODS, RECONSTRUCTION, select_channels

__all__ = [
    "METHODS",
    "RECONSTRUCTION",
    "LayerData",
    "QuadProblem",
    "Reconstruction",
    "Samples",
    "greedy_eliminate",
    "kept_columns",
    "reconstruct",
    "relative_errors",
    "select_channels",
]
