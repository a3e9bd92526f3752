"""The test graphs are valid and the coupling analysis finds what it should."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from models import BUILDERS, concat, grouped_conv, inputs_for
from onnx_poem import graph, prune
from onnx_poem.coupling import Grouped, PadFix, ReshapeFix, find_groups
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView
from onnx_poem.weights import effective


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builder_is_valid_and_has_groups(name: str) -> None:
    view = GraphView.build(fold_constants(BUILDERS[name]()))  # as prune() and inspect see it
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
        view = GraphView.build(BUILDERS[name]())
        g = find_groups(view).groups[0]
        W0, _ = effective(view, g.consumers[0])
        assert (W0.shape[1] - 1) // g.consumers[0].in_channels == 16  # 4x4 positions per channel
    g = find_groups(GraphView.build(BUILDERS["reshape_gemm"]())).groups[0]
    assert len(g.edits_of(ReshapeFix)) == 1


def test_residual_block_internal_only() -> None:
    c = find_groups(GraphView.build(BUILDERS["residual"]()))
    assert len(c.groups) == 1
    assert c.groups[0].consumers[0].offset is not None  # shortcut is the offset before the ReLU
    reasons = " ".join(u.reason for u in c.unprunable)
    assert "residual stream" in reasons


def test_depthwise_is_carried_through() -> None:
    g = find_groups(GraphView.build(BUILDERS["depthwise"]())).groups[0]
    assert len(g.edits_of(Grouped)) == 1 and g.channels == 8
    assert g.consumers[0].kind == "conv"


def test_gelu_erf_pattern_passes_channels() -> None:
    g = find_groups(GraphView.build(BUILDERS["ffn"]())).groups[0]
    assert g.channels == 16 and g.consumers[0].kind == "matmul"
    assert g.consumers[0].bias is not None


def test_concat_joins_producers_side_by_side() -> None:
    (g,) = find_groups(GraphView.build(concat())).groups
    assert g.channels == 8 and len(g.producers) == 2 and not g.residual
    first, second = (p for p in g.params if p.axis == 0 and p.name.startswith("w"))
    assert first.index == (0, 1, 2, 3, -1, -1, -1, -1) and second.index == (-1, -1, -1, -1, 0, 1, 2, 3)


def test_residual_stream_is_one_group_with_option_a_offsets() -> None:
    view = GraphView.build(BUILDERS["resnet_option_a"]())
    assert not any(g.residual for g in find_groups(view).groups)  # default: stream left alone
    c = find_groups(view, residual=True)
    (stream,) = [g for g in c.groups if g.residual]
    assert stream.channels == 8  # stage-2 channels; the 4 stage-1 channels sit at positions 2..5
    assert len(stream.producers) == 3 and len(stream.edits_of(PadFix)) == 1
    stage1 = [p for p in stream.params if p.index is not None and sum(i >= 0 for i in p.index) == 4]
    assert stage1
    idx = stage1[0].index
    assert sorted(i for i in idx if i >= 0) == [0, 1, 2, 3]
    assert [a for a, i in enumerate(idx) if i >= 0] == [2, 3, 4, 5] or len(set(idx) - {-1}) == 4


def test_residual_policy_reports_the_stream() -> None:
    c = find_groups(GraphView.build(BUILDERS["residual"]()), residual=False)
    assert any("residual stream" in u.reason and "--residual stream" in u.reason for u in c.unprunable)


def test_squeeze_excite_gate_prunes_with_the_main_path() -> None:
    c = find_groups(GraphView.build(BUILDERS["squeeze_excite"]()))
    main = next(g for g in c.groups if g.channels == 8)
    assert len(main.producers) == 2 and not main.residual  # the gate's expand conv joins via Mul
    kinds = sorted(x.label for x in main.consumers)
    assert len(kinds) == 2  # the SE reduce conv and the conv after the Mul


def test_channel_split_and_slice_map_offsets() -> None:
    (g,) = find_groups(GraphView.build(BUILDERS["split_slice"]())).groups
    idx = sorted((c.index for c in g.consumers), key=lambda i: [v < 0 for v in i])
    assert (0, 1, 2, 3, -1, -1, -1, -1) in idx and (-1, -1, -1, -1, 0, 1, 2, 3) in idx
    assert (-1, -1, 0, 1, 2, 3, -1, -1) in idx  # Slice 2:6


def test_per_channel_parameters_of_prelu_and_instance_norm() -> None:
    (g,) = find_groups(GraphView.build(BUILDERS["prelu_instnorm"]())).groups
    assert len(g.params) == 5  # conv W, b; InstanceNorm scale, bias; PRelu slope


def test_conv_transpose_is_a_producer_and_a_consumer() -> None:
    first, second = find_groups(GraphView.build(BUILDERS["conv_transpose"]())).groups
    assert first.params[0].axis == 1  # ConvTranspose weight is (C_in, C_out, kh, kw)
    assert [c.kind for c in first.consumers] == ["convt"]
    assert first.consumers[0].output_padding == (1, 1)
    assert [c.kind for c in second.consumers] == ["conv"]


def test_control_flow_and_recurrent_parts_stay_unpruned_with_reasons() -> None:
    from models import control_flow, recurrent

    c = find_groups(GraphView.build(control_flow()))
    assert not c.groups and "subgraph" in c.unprunable[0].reason
    c = find_groups(GraphView.build(recurrent()))
    assert not c.groups and "LSTM" in c.unprunable[0].reason


def test_layout_transposes_move_the_channel_axis() -> None:
    from models import nhwc_layout

    view = GraphView.build(nhwc_layout())
    coupling = find_groups(view)
    assert sorted(g.channels for g in coupling.groups) == [6, 8]
    assert not coupling.unprunable or all("graph output" in u.reason for u in coupling.unprunable)
    eight = next(g for g in coupling.groups if g.channels == 8)
    assert [c.kind for c in eight.consumers] == ["conv"]
    assert any(p.name.startswith("s") for p in eight.params)  # the Mul constant broadcast on the NHWC axis
    six = next(g for g in coupling.groups if g.channels == 6)
    assert [c.kind for c in six.consumers] == ["gemm"]


def test_the_fused_gelu_op_is_the_consumers_activation() -> None:
    from models import ffn_gelu_op

    first, second = find_groups(GraphView.build(ffn_gelu_op())).groups
    assert (first.channels, second.channels) == (8, 16)
    assert first.consumers[0].activation.kind == "gelu"  # MatMul(8→16) + b → Gelu
    assert second.consumers[0].activation.kind == "identity"


def test_grouped_conv_is_pruned_by_whole_groups() -> None:
    """ResNeXt: an atom is one conv group (2 channels); the grouped conv keeps its channels per group."""
    model = grouped_conv()
    (g,) = find_groups(GraphView.build(model)).groups
    assert g.block == 2 and g.channels == 4 and g.edits_of(Grouped)[0].per_group == 2
    assert g.consumers[0].in_channels == 4  # counted in blocks: 2·9 columns per block
    pruned, rep = prune(model, ratio=0.5, calib=inputs_for(model, 64), seed=0)
    conv = [n for n in pruned.graph.node if n.op_type == "Conv"]
    group = next(a.i for a in conv[1].attribute if a.name == "group")
    w = {t.name: t for t in pruned.graph.initializer}
    assert group == 2 and list(w[conv[1].input[1]].dims) == [4, 2, 3, 3]
    assert next(iter(w[conv[0].input[1]].dims)) == 4 and list(w[conv[2].input[1]].dims)[1] == 4
    assert rep.groups[0]["channels"] == 8 and rep.groups[0]["kept"] == 4


@pytest.mark.parametrize("name", ["bert_tiny.ts", "llama_gqa_tiny.ts"])
def test_the_views_shape_run_needs_no_weights(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shapes shape inference leaves open are observed with zero weights (no copy of them; a Range's scalar
    inputs are never stubbed) and equal those observed with the real weights."""
    model = fold_constants(onnx.load(str(Path(__file__).parent / "zoo" / f"{name}.onnx")))
    assert any(n.op_type == "Range" for n in model.graph.node)
    shapes = {i.name: [2, 16] for i in model.graph.input}
    real_session, asked = graph.session, []

    def spy(m, **kw):  # type: ignore[no-untyped-def]
        asked.append(kw.get("values", True))
        return real_session(m, **kw)

    monkeypatch.setattr(graph, "session", spy)
    view = graph.GraphView.build(model, input_shapes=shapes)
    assert asked and not any(asked)  # every shape run fed zero weights
    monkeypatch.setattr(graph, "session", lambda m, **kw: real_session(m, **{**kw, "values": True}))
    real = graph.GraphView.build(model, input_shapes=shapes)
    assert view.shapes == real.shapes and view.dtypes == real.dtypes
