"""Numerical core: selection and reconstruction. Pure NumPy/SciPy, no ONNX."""

from .reconstruct import LayerData, Reconstruction, Samples, kept_columns, reconstruct, relative_errors
from .select import METHODS, RECONSTRUCTION, select_channels

__all__ = [
    "METHODS",
    "RECONSTRUCTION",
    "LayerData",
    "Reconstruction",
    "Samples",
    "kept_columns",
    "reconstruct",
    "relative_errors",
    "select_channels",
]
