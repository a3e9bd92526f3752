"""Check a rewritten model and compare it with the original on held-out samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .calibration.sources import CalibrationData
from .errors import VerificationError
from .graph import check_model


def session(model: onnx.ModelProto, *, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` (warnings silenced)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def verify(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    data: CalibrationData,
    indices: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """Check ``pruned`` and measure per-output agreement with ``original`` on samples ``indices``.

    Returns:
        output name → ``rel_error`` (‖ŷ − y‖ / ‖y‖ over all samples), ``max_abs_error``
        and, for ``(N, K)`` outputs with K > 1, ``top1_agreement`` (same argmax; meaningful for
        class scores) and ``cosine`` (mean per-sample cosine similarity; meaningful for embeddings).

    Raises:
        VerificationError: the checker rejects ``pruned`` or onnxruntime cannot run it.
    """
    check_model(pruned, what="pruned model", error=VerificationError)
    try:
        s_pruned = session(pruned)
    except Exception as e:
        raise VerificationError(f"onnxruntime cannot load the pruned model: {e}") from e
    s_orig = session(original)
    names = [o.name for o in original.graph.output]
    sq_err = dict.fromkeys(names, 0.0)
    sq_ref = dict.fromkeys(names, 0.0)
    max_abs = dict.fromkeys(names, 0.0)
    agree = dict.fromkeys(names, 0)
    cosine = dict.fromkeys(names, 0.0)
    count = 0
    for feed in data.batches(indices, batch_size):
        ref = s_orig.run(names, feed)
        try:
            out = s_pruned.run(names, feed)
        except Exception as e:
            raise VerificationError(f"onnxruntime failed to run the pruned model: {e}") from e
        for n, r, o in zip(names, ref, out, strict=True):
            r64, o64 = np.asarray(r, dtype=np.float64), np.asarray(o, dtype=np.float64)
            if r64.shape != o64.shape:
                raise VerificationError(f"output {n} changed shape from {r64.shape} to {o64.shape}")
            sq_err[n] += float(np.sum((o64 - r64) ** 2))
            sq_ref[n] += float(np.sum(r64**2))
            max_abs[n] = max(max_abs[n], float(np.max(np.abs(o64 - r64))) if r64.size else 0.0)
            if r64.ndim == 2 and r64.shape[1] > 1:
                agree[n] += int(np.sum(np.argmax(r64, 1) == np.argmax(o64, 1)))
                norms = np.linalg.norm(r64, axis=1) * np.linalg.norm(o64, axis=1)
                cosine[n] += float(np.sum(np.sum(r64 * o64, axis=1) / np.maximum(norms, 1e-30)))
        count += len(next(iter(feed.values())))
    result: dict[str, dict[str, float]] = {}
    for n in names:
        result[n] = {"rel_error": float(np.sqrt(sq_err[n] / max(sq_ref[n], 1e-30))), "max_abs_error": max_abs[n]}
        if count and _is_2d_scores(original, n):
            result[n]["top1_agreement"] = agree[n] / count
            result[n]["cosine"] = cosine[n] / count
    return result


def _is_2d_scores(model: onnx.ModelProto, name: str) -> bool:
    for o in model.graph.output:
        if o.name == name:
            dims = o.type.tensor_type.shape.dim
            return len(dims) == 2 and (not dims[1].HasField("dim_value") or dims[1].dim_value > 1)
    return False
