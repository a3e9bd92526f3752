"""The default ridge per group (onnx_poem.damping): token consumers 0.1, every other group 0.01."""

from __future__ import annotations

import onnx
import pytest

from models import attention, attention_inputs, conv_chain, ffn, flatten_gemm, inputs_for
from onnx_poem import prune
from onnx_poem.config import PruneConfig
from onnx_poem.coupling import find_groups
from onnx_poem.damping import DEFAULT_DAMPING, TOKEN_DAMPING, group_damping
from onnx_poem.graph import GraphView


def _dampings(model: onnx.ModelProto, cfg: PruneConfig, shapes: dict[str, tuple[int, ...]]) -> list[float]:
    view = GraphView.build(model, input_shapes=shapes)
    return [group_damping(view, g, cfg) for g in find_groups(view).groups]


def test_token_groups_get_the_transformer_ridge() -> None:
    cfg = PruneConfig(ratio=0.5)
    assert _dampings(ffn(), cfg, {"x": (2, 4, 6)}) == [TOKEN_DAMPING]
    heads = _dampings(attention(), cfg, {"x": (2, 6, 16), "attention_mask": (2, 6)})
    assert heads and set(heads) == {TOKEN_DAMPING}


@pytest.mark.parametrize("build", [conv_chain, flatten_gemm])
def test_convolutions_and_flat_heads_keep_the_cnn_ridge(build: object) -> None:
    model = build()  # type: ignore[operator]
    shape = tuple(d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim)
    got = _dampings(model, PruneConfig(ratio=0.5), {model.graph.input[0].name: shape})
    assert got and set(got) == {DEFAULT_DAMPING}


def test_a_given_damping_applies_to_every_group() -> None:
    cfg = PruneConfig(ratio=0.5, damping=0.3)
    assert _dampings(ffn(), cfg, {"x": (2, 4, 6)}) == [0.3]
    assert set(_dampings(conv_chain(), cfg, {"x": (2, 3, 8, 8)})) == {0.3}


def _bytes(model: onnx.ModelProto, calib: object, **kw: object) -> tuple[bytes, list[float]]:
    pruned, rep = prune(model, ratio=0.5, calib=calib, samples=64, allocation="uniform", **kw)  # type: ignore[arg-type]
    return pruned.SerializeToString(), [lr.damping for lr in rep.layers]


def test_the_default_is_the_measured_value_of_each_family() -> None:
    """The default run is the run with the family's value given, and another value gives another model."""
    calib = attention_inputs(64, 6)
    model = attention(style="const")
    default, lams = _bytes(model, calib)
    assert set(lams) == {TOKEN_DAMPING}
    assert default == _bytes(model, calib, damping=TOKEN_DAMPING)[0]
    assert default != _bytes(model, calib, damping=DEFAULT_DAMPING)[0]
    cnn = conv_chain()
    x = inputs_for(cnn, 64)
    default, lams = _bytes(cnn, x)
    assert set(lams) == {DEFAULT_DAMPING}
    assert default == _bytes(cnn, x, damping=DEFAULT_DAMPING)[0]
