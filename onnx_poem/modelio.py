"""Loading, copying and shape-inferring models for a run (no numerics)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from .errors import ModelError
from .external import data_path, weights_digest
from .graph import check_model, input_files, load_model, skeleton

logger = logging.getLogger(__name__)


def load_checked(model: onnx.ModelProto | str | Path) -> tuple[onnx.ModelProto, str]:
    """The model (checked) and a name for the report."""
    if isinstance(model, onnx.ModelProto):
        check_model(model, what="input model", error=ModelError)
        return model, model.graph.name or "model"
    return load_model(model), Path(model).name


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def infer_or_keep(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a copy the caller owns) given, in place, the inferred ``value_info`` of its tensors
    (strict, type-checked), or unchanged with a warning if inference fails (the final checker reports
    real problems).

    Inference runs on :func:`onnx_poem.graph.skeleton` ``(model)`` (weights' values never matter to it)
    and its ``value_info`` and outputs are copied back: what full inference would give, without a copy
    of the weights.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), check_type=True, strict_mode=True)
    except Exception as e:
        logger.warning("shape inference of the pruned model failed: %s", e)
        return model
    del model.graph.value_info[:]
    weights = {t.name for t in model.graph.initializer}
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in weights)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def digest(model: onnx.ModelProto) -> str:
    """SHA-256 of ``model`` (:func:`onnx_poem.external.weights_digest`: what a saved plan was computed for)."""
    return weights_digest(model)


def stores_external(path: Path) -> bool:
    """The model file at ``path`` keeps (some of) its tensors in external data files (every model past
    protobuf's 2 GB limit does); its pruned models are then written the same way."""
    return len(input_files(path)) > 1


def output_files(path: Path, *, external: bool) -> list[Path]:
    """The files :func:`onnx_poem.external.encode` writes for a model at ``path``."""
    return [path, data_path(path)] if external else [path]
