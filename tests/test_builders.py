"""The test graphs are valid and the coupling analysis finds what it should."""

from __future__ import annotations

import pytest

from models import BUILDERS, concat
from onnx_poem.coupling import find_groups
from onnx_poem.graph import GraphView


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_is_valid_and_has_groups(name: str) -> None:
    view = GraphView.build(BUILDERS[name]())
    coupling = find_groups(view)
    assert coupling.groups, name
    for g in coupling.groups:
        assert g.consumers and g.channels > 0


def test_chain_with_bn_slices_bn_params() -> None:
    c = find_groups(GraphView.build(BUILDERS["conv_bn_after"]()))
    first = c.groups[0]
    assert len(first.params) == 6  # conv W, b and the four BN vectors
    assert first.consumers[0].activation.kind == "relu"


def test_bn_before_activation_is_folded_into_consumer() -> None:
    m = BUILDERS["conv_bn_before"]()
    c = find_groups(GraphView.build(m))
    # the first conv is the consumer of nothing; the second conv of group 1 is followed by relu only
    assert c.groups[0].consumers[0].bn is None
    assert c.groups[0].consumers[0].activation.kind == "relu"


def test_flatten_gives_spatial_columns() -> None:
    for name in ("flatten_gemm", "reshape_gemm"):
        g = find_groups(GraphView.build(BUILDERS[name]())).groups[0]
        assert g.consumers[0].cols_per_channel == 16
    g = find_groups(GraphView.build(BUILDERS["reshape_gemm"]())).groups[0]
    assert len(g.reshapes) == 1


def test_residual_block_internal_only() -> None:
    c = find_groups(GraphView.build(BUILDERS["residual"]()))
    assert len(c.groups) == 1
    assert c.groups[0].consumers[0].offset is not None  # shortcut is the offset before the ReLU
    reasons = " ".join(u.reason for u in c.unprunable)
    assert "Add with another computed tensor" in reasons


def test_depthwise_is_carried_through() -> None:
    g = find_groups(GraphView.build(BUILDERS["depthwise"]())).groups[0]
    assert len(g.grouped) == 1 and g.channels == 8
    assert g.consumers[0].kind == "conv"


def test_gelu_erf_pattern_passes_channels() -> None:
    g = find_groups(GraphView.build(BUILDERS["ffn"]())).groups[0]
    assert g.channels == 16 and g.consumers[0].kind == "matmul"
    assert g.consumers[0].bias is not None


def test_concat_is_left_unpruned_with_reason() -> None:
    c = find_groups(GraphView.build(concat()))
    assert not c.groups
    assert any("Concat" in u.reason for u in c.unprunable)
