"""Loading, copying and shape-inferring models for a run (no numerics)."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from .errors import ModelError
from .graph import check_model, load_model
from .planfile import model_digest

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
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # the checker in verify() reports real problems
        logger.warning("shape inference of the pruned model failed: %s", e)
        return model


def digest(model: onnx.ModelProto) -> str:
    """SHA-256 of ``model``'s deterministic serialisation (what a saved plan was computed for)."""
    return model_digest(model.SerializeToString(deterministic=True))
