"""Exception hierarchy of onnx-poem.

Every error the library raises on purpose derives from :class:`PoemError`, so
callers (and the CLI) can catch one type.  The CLI maps :class:`UsageError` to
exit code 2 and every other :class:`PoemError` to exit code 1.
"""

from __future__ import annotations


class PoemError(Exception):
    """Base class of all onnx-poem errors."""


class UsageError(PoemError):
    """A parameter given by the caller is out of range or inconsistent."""


class ModelError(PoemError):
    """The model file is missing, unreadable, corrupt or not a valid ONNX graph."""


class CalibrationError(PoemError):
    """Calibration data does not match the model (names, shapes, dtypes) or is not finite."""


class SolverError(PoemError):
    """A numerical solver failed in a way no fallback could absorb."""


class VerificationError(PoemError):
    """The rewritten model failed the checker or could not be run by onnxruntime."""


class OutputError(PoemError):
    """The output path is unusable (exists, equals the input, or cannot be written)."""


def one_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters): why a part was left unpruned."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:300]
