"""onnx-poem: structured pruning of ONNX models with output-error-minimising reconstruction."""

from .api import PruneConfig, prune
from .calibration.sources import ImageOptions
from .errors import (
    CalibrationError,
    ModelError,
    OutputError,
    PoemError,
    SolverError,
    UsageError,
    VerificationError,
)
from .report import PruneReport

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "ImageOptions",
    "ModelError",
    "OutputError",
    "PoemError",
    "PruneConfig",
    "PruneReport",
    "SolverError",
    "UsageError",
    "VerificationError",
    "__version__",
    "prune",
]
