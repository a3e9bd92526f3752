"""--residual srn / project: residual blocks serialised exactly, pruned against the original's MACs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import shared_file

from models import inputs_for, inverted_residual, projection_block, residual, resnet_option_a
from onnx_poem import prune
from onnx_poem.allocation import MacsTable, keep_counts
from onnx_poem.cli import main
from onnx_poem.config import PruneConfig
from onnx_poem.coupling import find_groups
from onnx_poem.errors import UsageError
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView
from onnx_poem.report import count_macs, node_macs
from onnx_poem.srn import serialise


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {model.graph.input[0].name: x})[0]


def _exact(model: onnx.ModelProto, form: str, x: np.ndarray) -> onnx.ModelProto:
    s = serialise(model, form)
    onnx.checker.check_model(s.model, full_check=True)
    a, b = _run(model, x), _run(s.model, x)
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())
    return s.model


@pytest.mark.parametrize("form", ["dirac", "1x1"])
@pytest.mark.parametrize(
    ("builder", "blocks"),
    [(residual, 1), (resnet_option_a, 2), (projection_block, 1), (lambda: inverted_residual(relu6_input=True), 2)],
)
def test_serialised_model_is_exact(builder, blocks: int, form: str) -> None:
    model = builder()
    s = serialise(model, form)
    assert len(s.blocks) == blocks and not s.left
    out = _exact(model, form, inputs_for(model, 4))
    assert not [n for n in out.graph.node if n.op_type in ("Slice", "Pad")]
    if form == "dirac":  # plain chains: no residual Add is left
        assert not [n for n in out.graph.node if n.op_type == "Add"]


def test_dirac_carries_the_input_through_the_branch() -> None:
    """The first conv gains the block input's channels (Dirac kernels), the last reads them: MACs rise."""
    model = residual()
    out = serialise(model, "dirac").model
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    w = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    assert w[convs[1].input[1]].shape == (8 + 6, 8, 3, 3)  # carried 8, then the branch's 6
    assert w[convs[2].input[1]].shape == (8, 8 + 6, 3, 3)
    np.testing.assert_array_equal(w[convs[1].input[1]][:8, :, 1, 1], np.eye(8))
    one = {"x": inputs_for(model, 1)}
    assert count_macs(out, one) > count_macs(model, one)


def test_linear_bottleneck_is_left_by_dirac_with_the_reason_and_projected_by_1x1() -> None:
    model = inverted_residual()  # the block input is a conv's linear output: Relu6 would clip it
    s = serialise(model, "dirac")
    assert not s.blocks and len(s.left) == 2
    assert all("does not pass" in why and "Clip" in why for why in s.left.values())
    out = _exact(model, "1x1", inputs_for(model, 3))
    assert len([n for n in out.graph.node if n.op_type == "Conv"]) == 1 + 2 * 3 + 2  # a 1x1 shortcut per block


@pytest.mark.parametrize("name", ["cifar10_resnet20", "cifar10_resnet56"])
@pytest.mark.parametrize("form", ["dirac", "1x1"])
def test_cifar_resnets_serialise_exactly(name: str, form: str) -> None:
    model = fold_constants(onnx.load(shared_file(f"models/{name}.onnx")))
    s = serialise(model, form)
    assert len(s.blocks) == {"cifar10_resnet20": 9, "cifar10_resnet56": 27}[name] and not s.left
    x = np.abs(np.random.default_rng(0).standard_normal((2, 3, 32, 32))).astype(np.float32)
    _exact(model, form, x)


@pytest.mark.parametrize("residual_policy", ["srn", "project"])
def test_budget_counts_against_the_original(residual_policy: str) -> None:
    model = resnet_option_a()
    x = inputs_for(model, 96)
    pruned, rep = prune(model, target_macs=0.7, calib=x, residual=residual_policy, allocation="uniform")
    one = {"x": x[:1]}
    assert rep.macs_before == count_macs(model, one)  # the original's, not the serialised model's
    assert rep.macs_ratio <= 0.71 and count_macs(pruned, one) == rep.macs_after
    assert rep.residual == residual_policy and len(rep.serialised["blocks"]) == 2
    assert f"{residual_policy:13}2 residual block(s) rewritten" in rep.summary()
    onnx.checker.check_model(pruned, full_check=True)
    _run(pruned, x[:3])


def test_ratio_with_srn_means_the_original_blocks_ratio() -> None:
    """--ratio r with srn reaches the MACs that r leaves on the original's block-internal groups, down to the
    step of this tiny model's groups (4-8 channels: one channel is 12-25 % of a group)."""
    model = resnet_option_a()
    x = inputs_for(model, 96)
    groups = find_groups(GraphView.build(model), residual=False).groups
    asked = MacsTable.build(groups, node_macs(model, {"x": x[:1]})).predict(groups, keep_counts(groups, 0.5))
    _, srn = prune(model, ratio=0.5, calib=x, allocation="uniform", residual="srn")
    assert asked - 0.12 < srn.macs_ratio <= asked + 0.01
    assert not [w for w in srn.warnings if "budget" in w]


def test_nothing_pruned_with_srn_writes_the_original() -> None:
    model = resnet_option_a()
    x = inputs_for(model, 32)
    pruned, rep = prune(model, ratio=0.0, calib=x, residual="srn")
    same, _ = prune(model, ratio=0.0, calib=x)
    assert pruned.SerializeToString() == same.SerializeToString() and rep.macs_ratio == 1.0
    np.testing.assert_array_equal(_run(pruned, x), _run(model, x))


def test_legacy_prune_residual_means_stream() -> None:
    assert PruneConfig.of(prune_residual=True, ratio=0.5).residual == "stream"
    assert PruneConfig.of(prune_residual=False, ratio=0.5).residual == "internal"
    with pytest.raises(UsageError):
        PruneConfig.of(prune_residual=True, residual="srn", ratio=0.5)
    with pytest.raises(UsageError):
        PruneConfig(ratio=0.5, residual="chain").validate()


def test_cli_srn_plan_round_trip(tmp_path: Path) -> None:
    model = resnet_option_a()
    m, c = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(model, m)
    np.savez(c, x=inputs_for(model, 64))
    run = CliRunner().invoke
    res = run(main, [str(m), "--target-macs", "0.7", "--calib", str(c), "--residual", "srn", "-o",
                     str(tmp_path / "a.onnx"), "--save-plan", str(tmp_path / "p.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 residual block(s) rewritten (serialised into chains), 0 left" in res.output
    res = run(main, [str(m), "--apply-plan", str(tmp_path / "p.json"), "-o", str(tmp_path / "b.onnx")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    res = run(main, [str(m), "--ratio", "0.5", "--calib", str(c), "--residual", "srn", "--prune-residual"])
    assert res.exit_code == 2 and "--prune-residual means --residual stream" in res.output
    res = run(main, ["inspect", str(m), "--residual", "srn"])
    assert res.exit_code == 0 and "2 residual blocks serialised, 0 left" in res.output


def test_auto_keeps_the_policy_whose_outputs_are_closest() -> None:
    """--residual auto prunes with internal, stream and project and keeps another policy than internal only when
    it is clearly closer to the original on the selection samples: the same bytes as a run with the kept policy
    given, at the same MACs against the original."""
    model = resnet_option_a()
    x = inputs_for(model, 128)
    pruned, rep = prune(model, target_macs=0.6, calib=x, residual="auto")
    assert list(rep.residual_auto) == ["internal", "stream", "project"]
    if rep.residual != "internal":
        assert rep.residual_auto[rep.residual] < rep.residual_auto["internal"]
    fixed, fixed_rep = prune(model, target_macs=0.6, calib=x, residual=rep.residual)
    assert pruned.SerializeToString() == fixed.SerializeToString()
    assert f"auto chose {rep.residual}" in rep.summary()
    assert rep.macs_after / rep.macs_before == pytest.approx(fixed_rep.macs_after / fixed_rep.macs_before)


def test_auto_keeps_project_when_it_is_clearly_closer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice rule itself: with the selection errors forced, a candidate whose paired error is lower by more
    than two standard errors is kept (here project), and the model is the one a fixed --residual project writes."""
    import onnx_poem.pipeline.candidates as candidates
    from onnx_poem.pipeline.context import RunContext

    model = resnet_option_a()
    x = inputs_for(model, 96)
    errors = {"internal": 0.30, "stream": 0.29, "project": 0.10}
    rng = np.random.default_rng(0)

    def fake(ctx: RunContext, pruned: onnx.ModelProto) -> np.ndarray:
        n = len(ctx.split.select) + len(ctx.split.fit)
        return errors[ctx.cfg.residual] + 0.01 * rng.standard_normal(n)

    monkeypatch.setattr(candidates, "choice_errors", fake)
    pruned, rep = prune(model, target_macs=0.6, calib=x, residual="auto")
    assert rep.residual == "project" and rep.serialised is not None
    monkeypatch.undo()
    fixed, _ = prune(model, target_macs=0.6, calib=x, residual="project")
    assert pruned.SerializeToString() == fixed.SerializeToString()


def test_auto_without_residual_streams_tries_internal_only() -> None:
    from models import conv_chain

    model = conv_chain()
    _, rep = prune(model, ratio=0.5, calib=inputs_for(model, 64), residual="auto")
    assert list(rep.residual_auto) == ["internal"] and rep.residual == "internal"


def test_auto_refuses_dry_runs_and_families() -> None:
    from onnx_poem.api import run, run_family

    model = resnet_option_a()
    x = inputs_for(model, 32)
    with pytest.raises(UsageError, match="dry run"):
        run(model, ratio=0.5, calib=x, residual="auto", dry_run=True)
    with pytest.raises(UsageError, match="family"):
        run_family(model, [0.3, 0.5], calib=x, residual="auto")


def test_block_after_max_pooling_of_a_relu_is_carried() -> None:
    """Max pooling keeps some of its input's values: a block reading a pooled Relu output is non-negative too
    (torchvision's ResNets: stem → relu → maxpool → the first block)."""
    from models import _B

    b = _B(0)
    x0 = b.node("MaxPool", [b.node("Relu", [b.conv("x", 3, 8)])], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    t = b.node("Relu", [b.conv(x0, 8, 6)])
    t = b.node("Relu", [b.node("Add", [b.conv(t, 6, 8), x0])])
    model = b.model([("x", ["N", 3, 8, 8])], [b.node("GlobalAveragePool", [t])])
    assert len(serialise(model, "dirac").blocks) == 1
    _exact(model, "dirac", inputs_for(model, 2))


def test_cli_unknown_residual_policy_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    model = resnet_option_a()
    m, c, out = tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "o.onnx"
    onnx.save(model, m)
    np.savez(c, x=inputs_for(model, 32))
    res = CliRunner().invoke(main, [str(m), "--ratio", "0.5", "--calib", str(c), "--residual", "chain", "-o", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output and "chain" in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, [str(m), "--ratio", "0.5", "--calib", str(c), "--residual", "auto", "--dry-run"])
    assert res.exit_code != 0 and "--residual auto" in res.output and "Traceback" not in res.output


def test_inspect_refuses_auto_in_one_line(tmp_path: Path) -> None:
    """inspect analyses one policy: --residual auto (which prunes to choose) is a usage error, nothing else."""
    m = tmp_path / "m.onnx"
    onnx.save(resnet_option_a(), m)
    res = CliRunner().invoke(main, ["inspect", str(m), "--residual", "auto"])
    assert res.exit_code == 2 and "Traceback" not in res.output and "auto" in res.output
