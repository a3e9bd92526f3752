"""Latency budgets: runtimes, models of given widths, per-layer tables, PRO's cost in seconds, the closed loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from models import BUILDERS, inputs_for
from onnx_poem import prune
from onnx_poem.allocation import MacsTable, pro_keeps, region_keeps
from onnx_poem.cli import main
from onnx_poem.coupling import find_groups
from onnx_poem.errors import UsageError
from onnx_poem.graph import GraphView
from onnx_poem.latency import LatencyCost, LatencyTable, Runtime, fit_target, load_cached, save_cached
from onnx_poem.latency.table import measure_table
from onnx_poem.latency.widths import width_model
from onnx_poem.verify import session


def test_runtime_specs() -> None:
    assert Runtime.parse("ort-cpu:2") == Runtime("ort-cpu", 2)
    assert Runtime.parse("ort-cpu").threads >= 1
    assert Runtime.parse("openvino:3").name == "openvino:3"
    assert Runtime.parse("tensorrt").name == "tensorrt"
    for bad in ("ort-gpu", "ort-cpu:0", "ort-cpu:x", ""):
        with pytest.raises(UsageError, match="latency-on"):
            Runtime.parse(bad)


def test_a_missing_runtime_is_one_usage_error() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        Runtime.parse("ort-cuda").check()


@pytest.mark.parametrize("name", ["conv_chain", "residual", "depthwise", "flatten_gemm", "grouped_conv"])
def test_width_model_has_the_real_plans_shapes(name: str) -> None:
    """A model of given widths (no calibration) has the tensor shapes the real pruning gives."""
    model = BUILDERS[name]()
    x = inputs_for(model, 64)
    pruned, _ = prune(model, ratio=0.5, calib=x, method="l1", allocation="uniform", prune_residual=True)
    view = GraphView.build(model)
    coupling = find_groups(view, residual=True)
    groups = {g.id: g for g in coupling.groups}
    widths = width_model(view, groups, {g.id: region_keeps(g, 0.5) for g in coupling.groups})
    real = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    mine = {t.name: tuple(t.dims) for t in widths.graph.initializer}
    assert {k: v for k, v in mine.items() if k in real} == real
    onnx.checker.check_model(widths, full_check=True)
    out = session(widths).run(None, {model.graph.input[0].name: x[:2]})[0]
    assert out.shape == session(pruned).run(None, {model.graph.input[0].name: x[:2]})[0].shape


def _table() -> LatencyTable:
    """Two groups of 16: ``a``'s node costs 3 s and halves at 8 atoms; ``b``'s costs 1 s, one node shared."""
    return LatencyTable(
        runtime="ort-cpu:1",
        batch=1,
        step=1,
        base={"na": 3.0, "nb": 1.0, "nab": 2.0, "other": 4.0},
        curves={
            "a": {"na": ((8, 4), (1.5, 0.9)), "nab": ((8, 4), (1.2, 0.8))},
            "b": {"nb": ((8, 4), (0.5, 0.3)), "nab": ((8, 4), (1.0, 0.5))},
        },
        channels={"a": 16, "b": 16},
    )


def test_table_predicts_from_its_factors() -> None:
    t = _table()
    assert t.predict({"a": 16, "b": 16}) == pytest.approx(1.0)
    # a at 8: na 1.5, nab 1.2 (b full); total 1.5 + 1 + 1.2 + 4 = 7.7 of 10
    assert t.predict({"a": 8, "b": 16}) == pytest.approx(0.77, abs=2e-3)
    # both at 8: nab scales by both factors: 2 * 0.6 * 0.5 = 0.6
    assert t.predict({"a": 8, "b": 8}) == pytest.approx((1.5 + 0.5 + 0.6 + 4) / 10, abs=2e-3)
    f = t.factors("a", "na")
    assert np.all(np.diff(f) > 0)  # never cheaper to keep more, and every move saves something
    assert LatencyTable.from_json(json.loads(json.dumps(t.to_json()))) == t


def test_noisy_timings_are_made_monotone() -> None:
    t = LatencyTable("r", 1, 1, {"n": 1.0}, {"a": {"n": ((12, 8, 4), (1.1, 0.7, 0.8))}}, {"a": 16})
    f = t.factors("a", "n")
    assert np.all(np.diff(f) > 0)
    assert f[12] <= 1.0 and f[4] <= 0.7 + 1e-9


def test_pro_spends_a_latency_budget_where_the_seconds_are() -> None:
    """Equal error curves: PRO by latency takes atoms from the group whose nodes cost the time; by MACs
    (equal MACs for both) it splits them evenly."""
    groups = [_G("a", 16), _G("b", 16)]
    convex = np.cumsum(np.arange(1, 16) ** 2) / 1000.0
    curves = {"a": convex, "b": convex}
    by_latency = pro_keeps(groups, curves, LatencyCost(groups, _table()), 0.8)
    assert by_latency["a"] < by_latency["b"]
    by_macs = pro_keeps(groups, curves, MacsTable(((100, None, "a"), (100, None, "b"))), 0.75)
    assert abs(by_macs["a"] - by_macs["b"]) <= 1
    # the cost's running value is the table's prediction
    cost = LatencyCost(groups, _table())
    cost.apply(0, 8, cost.saving(0, 8))
    assert cost.fraction() == pytest.approx(_table().predict({"a": 8, "b": 16}))


class _G:
    def __init__(self, gid: str, channels: int) -> None:
        self.id, self.channels, self.regions = gid, channels, None


def test_closed_loop_corrects_a_biased_prediction() -> None:
    """The runtime is 30 % slower than predicted: the loop lowers the predicted target until the
    measurement meets the real one, and keeps the least pruned allocation that does."""
    allocations = {}

    def allocate(t: float) -> dict[str, np.ndarray]:
        keep = max(1, round(100 * t))
        allocations[keep] = t
        return {"g": np.array([keep])}

    fit = fit_target(allocate, lambda q: min(1.0, 1.3 * q["g"][0] / 100), 0.6)
    assert fit.measured <= 0.6
    assert fit.measured >= 0.6 * 0.95
    assert len(fit.history) >= 2


def test_closed_loop_stops_when_nothing_changes() -> None:
    calls = []

    def measure(q: dict[str, np.ndarray]) -> float:
        calls.append(q)
        return 0.9

    fit = fit_target(lambda t: {"g": np.array([1])}, measure, 0.5)
    assert len(calls) == 1 and fit.measured == 0.9


def test_cache_round_trip_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "latency" / "k.json"
    save_cached(path, _table())
    assert load_cached(path) == _table()
    assert [p.name for p in path.parent.iterdir()] == ["k.json"]
    path.write_text("{not json")
    assert load_cached(path) is None


def test_measured_table_covers_the_groups_nodes() -> None:
    model = BUILDERS["conv_chain"]()
    view = GraphView.build(model)
    groups = find_groups(view).groups
    feed = {"x": inputs_for(model, 4)}
    table = measure_table(view, {g.id: g for g in groups}, groups, feed, Runtime("ort-cpu", 1), 2, {})
    assert set(table.base) == {n.output[0] for n in model.graph.node}
    for g in groups:
        # the producer conv, its relu and the consumer conv change with the group
        assert len(table.curves[g.id]) >= 3
        for counts, secs in table.curves[g.id].values():
            assert all(c % 2 == 0 and 0 < c < g.channels for c in counts) and all(s > 0 for s in secs)
    assert table.batch == 4


def test_cli_latency_target_writes_and_reports(tmp_path: Path) -> None:
    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 64))
    args = [str(tmp_path / "m.onnx"), "--target-latency", "0.8", "--batch", "8", "--latency-on", "ort-cpu:1",
            "--calib", str(tmp_path / "c.npz"), "--latency-cache", str(tmp_path / "cache"), "-q"]  # fmt: skip
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "o.onnx"), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    lat = rep["latency"]
    assert lat["runtime"] == "ort-cpu:1" and lat["batch"] == 8 and lat["target"] == 0.8
    assert lat["measured"] > 0 and lat["original_ms"] > 0 and lat["loop"] and lat["table_seconds"] > 0
    assert lat["step"] in (1, 2, 4, 8)
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)
    assert list((tmp_path / "cache" / "latency").glob("*.json"))
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "o2.onnx"), "--report", str(tmp_path / "r2.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r2.json").read_text())["latency"]["table_seconds"] == 0  # read from the cache


def test_latency_on_alone_reports_the_measured_latency(tmp_path: Path) -> None:
    model = BUILDERS["conv_chain"]()
    _, rep = prune(model, ratio=0.5, calib=inputs_for(model, 64), latency_on="ort-cpu:1", latency_batch=4)
    assert set(rep.latency) == {"runtime", "batch", "original_ms", "measured", "pruned_ms"}
    assert "latency      ort-cpu:1, batch 4" in rep.summary()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target-latency", "1.5"], "(0, 1]"),
        (["--target-latency", "fast"], "fraction"),
        (["--target-latency", "-3ms"], "> 0"),
        (["--target-latency", "0.5", "--ratio", "0.3"], "exactly one"),
        (["--target-latency", "0.5", "--latency-on", "gpu"], "latency-on"),
        (["--target-latency", "0.5", "--batch", "0"], "batch"),
        (["--apply-plan", "p.json", "--latency-on", "ort-cpu"], "--apply-plan"),
    ],
)
def test_bad_latency_options_are_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 16))
    res = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"), *extra])
    assert res.exit_code == 2
    assert message in res.output
    assert not (tmp_path / "m.poem.onnx").exists()


def test_a_latency_run_is_reproduced_by_its_plan(tmp_path: Path) -> None:
    """Timings make a latency-budgeted run vary; its saved plan gives its model byte for byte."""
    model = BUILDERS["residual"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 64))
    common = [str(tmp_path / "m.onnx"), "-q"]
    res = CliRunner().invoke(main, [*common, "--target-latency", "0.8", "--batch", "4", "--latency-on", "ort-cpu:1",
                                    "--calib", str(tmp_path / "c.npz"), "--latency-cache", str(tmp_path / "cache"),
                                    "-o", str(tmp_path / "a.onnx"), "--save-plan", str(tmp_path / "p.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*common, "--apply-plan", str(tmp_path / "p.json"), "-o", str(tmp_path / "b.onnx")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_dry_run_with_a_latency_target_times_the_widths(tmp_path: Path) -> None:
    model = BUILDERS["conv_chain"]()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 64))
    res = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), "--target-latency", "0.7", "--batch", "4",
                                    "--latency-on", "ort-cpu:1", "--calib", str(tmp_path / "c.npz"), "--dry-run",
                                    "--latency-cache", str(tmp_path / "cache")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "measured at the allocated widths" in res.output
    assert not (tmp_path / "m.poem.onnx").exists()


def test_html_report_shows_the_latency(tmp_path: Path) -> None:
    from onnx_poem.htmlreport import render_html

    model = BUILDERS["conv_chain"]()
    _, rep = prune(model, target_latency=0.8, calib=inputs_for(model, 64), latency_on="ort-cpu:1", latency_batch=4,
                   latency_cache=str(tmp_path))  # fmt: skip
    page = render_html(rep)
    assert "latency (ms, ort-cpu:1, batch 4)" in page
    assert "Latency target 0.800" in page and "Chosen" in page


def test_a_batch_the_model_cannot_take_is_one_line(tmp_path: Path) -> None:
    model = BUILDERS["reduce_mean_head"](batch=1)  # declared batch 1
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=inputs_for(model, 16))
    res = CliRunner().invoke(main, [str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npz"), "--ratio", "0.5",
                                    "--latency-on", "ort-cpu:1", "--batch", "4"])  # fmt: skip
    assert res.exit_code == 2
    assert "fixed batch of 1" in res.output


def test_a_cache_that_cannot_be_written_stops_nothing(tmp_path: Path) -> None:
    model = BUILDERS["conv_chain"]()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    pruned, rep = prune(model, target_latency=0.9, calib=inputs_for(model, 64), latency_on="ort-cpu:1",
                        latency_batch=4, latency_cache=str(blocker / "cache"))  # fmt: skip
    assert rep.latency["table_seconds"] > 0 and pruned is not None
    assert blocker.read_text() == "not a folder"
