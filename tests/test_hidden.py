"""``--hidden``: the residual stream of pre-LN transformers found, rotated and sliced (onnx_poem.hidden)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from models import _B, to_float16
from onnx_poem import prune
from onnx_poem.calibration.sources import CalibrationData
from onnx_poem.cli import main
from onnx_poem.errors import UsageError
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView, session
from onnx_poem.hidden import HiddenStream, NotSliceable, find_stream, slice_hidden, stream_moments
from onnx_poem.htmlreport import render_html
from onnx_poem.solvers.rotation import principal_basis

ZOO = Path(__file__).parent / "zoo"


def pre_ln(seed: int = 0, *, rms: bool = False, opset: int = 14) -> onnx.ModelProto:
    """A pre-LN block with decomposed norms on ``x (N, 5, 6)``: ``s0 = x·E + p``; ``s1 = s0 + relu(n(s0)·W1)·W2``;
    ``y = n(s1)·H``, ``n`` a decomposed LayerNorm (``ReduceMean``/``Sub``/``Pow``/``Sqrt``/``Div``, scale and bias)
    or, with ``rms``, an RMSNorm (``Pow``/``ReduceMean``/``Sqrt``/``Reciprocal``/``Mul``, scale only)."""
    b = _B(seed)
    d = 8
    r = b.rng

    def mean(x: str) -> str:
        if opset >= 18:
            return b.node("ReduceMean", [x, b.const(np.array([-1], np.int64), "axes")])
        return b.node("ReduceMean", [x], axes=[-1])

    def norm(x: str) -> str:
        two = b.const(np.array(2.0, np.float32), "c")
        eps = b.const(np.array(1e-5, np.float32), "c")
        y = x
        if not rms:
            y = b.node("Sub", [x, mean(x)])
        var = mean(b.node("Pow", [y, two]))
        root = b.node("Sqrt", [b.node("Add", [var, eps])])
        if rms:
            normed = b.node("Mul", [y, b.node("Reciprocal", [root])])
        else:
            normed = b.node("Div", [y, root])
        out = b.node("Mul", [b.const((1 + 0.3 * r.standard_normal(d)).astype(np.float32), "g"), normed])
        if not rms:
            out = b.node("Add", [out, b.const((0.2 * r.standard_normal(d)).astype(np.float32), "beta")])
        return out

    def dense(x: str, cin: int, cout: int, bias: bool = True) -> str:
        y = b.node("MatMul", [x, b.const((r.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32))])
        return b.node("Add", [y, b.const((0.1 * r.standard_normal(cout)).astype(np.float32), "b")]) if bias else y

    s0 = b.node("Add", [dense("x", 6, d, bias=False), b.const(r.standard_normal((5, d)).astype(np.float32), "pos")])
    s1 = b.node("Add", [s0, dense(b.node("Relu", [dense(norm(s0), d, 12)]), 12, d)])
    y = dense(norm(s1), d, 3, bias=not rms)
    return b.model([("x", ["N", 5, 6])], [y], opset=opset)


def _runs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feed)  # type: ignore[no-any-return]


def _stream(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> tuple[GraphView, HiddenStream]:
    view = GraphView.build(model, input_shapes=shapes)
    stream = find_stream(view)
    assert isinstance(stream, HiddenStream), stream
    return view, stream


def _orthogonal(d: int, seed: int = 0) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]


def _zoo_feed(model: onnx.ModelProto, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feed = {}
    for i in model.graph.input:
        dims = [d.dim_value or seq for d in i.type.tensor_type.shape.dim]
        dims[0] = batch
        if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            feed[i.name] = rng.standard_normal(dims).astype(np.float32)
        elif "mask" in i.name:
            feed[i.name] = np.ones(dims, np.int64)
        else:
            feed[i.name] = rng.integers(0, 50, dims).astype(np.int64)
    return feed


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("opset", [14, 18])
def test_rotation_without_slicing_is_exact(rms: bool, opset: int) -> None:
    model = pre_ln(rms=rms, opset=opset)
    _, stream = _stream(model, {"x": (1, 5, 6)})
    assert stream.centred is not rms and len(stream.norms) == 2 and stream.size == 8
    out = slice_hidden(model, stream, _orthogonal(8))
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(2).standard_normal((3, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(_runs(out, {"x": x})[0], _runs(model, {"x": x})[0], rtol=1e-4, atol=1e-5)
    assert not any(n.op_type in ("Sub", "Reciprocal") for n in out.graph.node)  # the norms were replaced


@pytest.mark.parametrize("name", ["vit_tiny.ts.onnx", "llama_gqa_tiny.ts.onnx", "llama_gqa_tiny.dynamo.onnx"])
def test_real_exports_rotate_exactly_at_every_shape(name: str) -> None:
    """A ViT (fused LayerNorm, class token, patch conv) and a LLaMA-style decoder (decomposed RMSNorm, grouped-query
    attention, a pooled output read through a back-projection), rotated without slicing, then sliced: the same
    outputs, and valid at other batch sizes and sequence lengths."""
    model = fold_constants(onnx.load(str(ZOO / name)))
    feed = _zoo_feed(model, 1, 8)
    _, stream = _stream(model, {k: v.shape for k, v in feed.items()})
    out = slice_hidden(model, stream, _orthogonal(stream.size))
    for batch, seq in ((2, 8), (3, 5)):
        if "vit" in name and seq != 8:
            continue
        f = _zoo_feed(model, batch, seq)
        want = _runs(model, f)[0]
        np.testing.assert_allclose(_runs(out, f)[0], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    sliced = slice_hidden(model, stream, _orthogonal(stream.size)[:, : stream.size // 2])
    onnx.checker.check_model(sliced, full_check=True)
    for batch, seq in ((2, 8), (3, 5)):
        if "vit" in name and seq != 8:
            continue
        f = _zoo_feed(model, batch, seq)
        assert [o.shape for o in _runs(sliced, f)] == [o.shape for o in _runs(model, f)]


def test_the_energy_free_direction_drops_exactly() -> None:
    """LayerNorm streams are centred by the rewrite, so the all-ones direction carries no energy: the principal
    basis puts it last, and dropping it changes nothing (fails when the writers are not centred)."""
    model = pre_ln()
    _, stream = _stream(model, {"x": (1, 5, 6)})
    x = np.random.default_rng(3).standard_normal((40, 5, 6)).astype(np.float32)
    data = CalibrationData({"x": x})
    q, energy = principal_basis(stream_moments(model, stream, data, [np.arange(40)]))
    assert energy[-1] < 1e-9 * energy[0]
    assert abs(abs(q[:, -1].sum()) - np.sqrt(8)) < 1e-6  # the last direction is 1/√D
    out = slice_hidden(model, stream, q[:, :7])
    np.testing.assert_allclose(_runs(out, {"x": x})[0], _runs(model, {"x": x})[0], rtol=1e-4, atol=1e-5)
    worse = slice_hidden(model, stream, q[:, 1:])  # dropping the first direction instead is not exact
    assert np.abs(_runs(worse, {"x": x})[0] - _runs(model, {"x": x})[0]).max() > 1e-2


def test_what_is_not_sliced_says_why() -> None:
    encoder = fold_constants(onnx.load(str(ZOO / "tinyencoder.dynamo.onnx")))  # its stream is transposed
    view = GraphView.build(encoder)
    why = find_stream(view)
    assert isinstance(why, NotSliceable) and "read by" in why.reason and "Transpose" in why.reason
    cnn = fold_constants(onnx.load(str(ZOO / "regnet_tiny.ts.onnx")))
    view = GraphView.build(cnn, input_shapes={"input": (1, 3, 32, 32)})
    why = find_stream(view)
    assert isinstance(why, NotSliceable) and "no LayerNorm" in why.reason


def test_prune_with_hidden_counts_the_budget_on_the_original() -> None:
    model = onnx.load(str(ZOO / "vit_tiny.ts.onnx"))
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    sliced, rep = prune(model, ratio=0.0, calib={"input": x}, samples=64, hidden=0.25)
    assert rep.hidden["sliced"] and (rep.hidden["size"], rep.hidden["kept"]) == (64, 48)
    assert 0.6 < rep.macs_ratio < 0.9  # the hidden size alone (the re-rotated skips add some)
    onnx.checker.check_model(sliced, full_check=True)
    _, rep2 = prune(model, target_macs=0.6, calib={"input": x}, samples=64, hidden=0.25, allocation="uniform")
    assert rep2.hidden["kept"] == 48 and abs(rep2.macs_ratio - 0.6) < 0.02  # against the original
    assert "hidden       48 of 64 dimensions kept" in rep2.summary()
    assert "Hidden size (--hidden): 48 of 64 dimensions kept" in render_html(rep2)
    _, plain = prune(model, ratio=0.0, calib={"input": x}, samples=64, hidden=0.0)
    assert plain.hidden == {} and plain.macs_ratio == 1.0


def test_hidden_on_a_model_without_a_stream_is_reported() -> None:
    model = onnx.load(str(ZOO / "regnet_tiny.ts.onnx"))
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    _, rep = prune(model, ratio=0.2, calib={"input": x}, samples=32, hidden=0.2)
    assert not rep.hidden["sliced"] and "no LayerNorm" in rep.hidden["reason"]
    assert "hidden       left as it is" in rep.summary()


def test_cli_refuses_a_plan_of_a_sliced_model(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        main,
        ["prune", str(ZOO / "vit_tiny.ts.onnx"), "--ratio", "0.2", "--hidden", "0.2", "--synthetic",
         "--save-plan", str(tmp_path / "p.json"), "-o", str(tmp_path / "o.onnx")],
    )  # fmt: skip
    assert res.exit_code != 0 and "--hidden" in res.output
    assert not any(tmp_path.iterdir())  # refused before any work: nothing written
    res = CliRunner().invoke(main, ["prune", str(ZOO / "vit_tiny.ts.onnx"), "--ratio", "0.2", "--hidden", "1.0"])
    assert res.exit_code != 0 and "--hidden" in res.output


@pytest.mark.parametrize("name", ["vit_tiny.ts.onnx", "llama_gqa_tiny.dynamo.onnx"])
def test_one_rotation_per_stretch_is_exact(name: str) -> None:
    """Every normalisation's stretch of the stream rotated by its own ``Q`` (the residual skips re-rotated):
    exact without slicing, one skip ``MatMul`` per stretch boundary."""
    model = fold_constants(onnx.load(str(ZOO / name)))
    feed = _zoo_feed(model, 2, 8)
    _, stream = _stream(model, {k: v.shape for k, v in feed.items()})
    anchors = sorted(set(stream.segment.values()))
    assert len(anchors) == len(stream.norms) and len(stream.skips) == len(anchors) - 1
    bases = {a: _orthogonal(stream.size, seed=i) for i, a in enumerate(anchors)}
    out = slice_hidden(model, stream, bases)
    onnx.checker.check_model(out, full_check=True)
    want = _runs(model, feed)[0]
    np.testing.assert_allclose(_runs(out, feed)[0], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    assert sum(n.name.endswith("_matmul") and "__poem_skip" in n.name for n in out.graph.node) == len(stream.skips)


def test_inspect_says_whether_hidden_applies() -> None:
    res = CliRunner().invoke(main, ["inspect", str(ZOO / "llama_gqa_tiny.dynamo.onnx")])
    assert res.exit_code == 0 and "hidden size: 64, sliceable by --hidden (5 RMSNorms" in res.output
    res = CliRunner().invoke(main, ["inspect", str(ZOO / "bert_tiny.ts.onnx")])
    assert res.exit_code == 0 and "hidden size: 64, sliceable by --hidden (5 LayerNorms" in res.output
    res = CliRunner().invoke(main, ["inspect", str(ZOO / "regnet_tiny.ts.onnx")])
    assert res.exit_code == 0 and "hidden size: not sliceable by --hidden (no LayerNorm" in res.output


def test_a_float16_model_stays_float16() -> None:
    model = to_float16(pre_ln())
    _, stream = _stream(model, {"x": (1, 5, 6)})
    out = slice_hidden(model, stream, _orthogonal(8)[:, :6])
    onnx.checker.check_model(out, full_check=True)
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in out.graph.initializer)
    x = np.random.default_rng(2).standard_normal((3, 5, 6)).astype(np.float16)
    assert _runs(out, {"x": x})[0].dtype == np.float16


def test_the_same_run_gives_the_same_bytes() -> None:
    model = onnx.load(str(ZOO / "vit_tiny.ts.onnx"))
    x = np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32)
    a, _ = prune(model, ratio=0.2, calib={"input": x}, samples=48, hidden=0.2)
    b, _ = prune(model, ratio=0.2, calib={"input": x}, samples=48, hidden=0.2)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_hidden_auto_tries_the_fractions_and_keeps_one() -> None:
    model = onnx.load(str(ZOO / "vit_tiny.ts.onnx"))
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    pruned, rep = prune(model, target_macs=0.6, calib={"input": x}, samples=64, hidden_auto=True, allocation="uniform")
    assert list(rep.hidden_auto) == ["0", "0.1", "0.2", "0.3", "0.4"]
    assert abs(rep.macs_ratio - 0.6) < 0.03
    onnx.checker.check_model(pruned, full_check=True)
    assert "auto sliced" in rep.summary()
    kept = rep.hidden["kept"] if rep.hidden else 64
    lowest = min(rep.hidden_auto.values())
    assert rep.hidden_auto[f"{round((64 - kept) / 64, 1):g}"] <= 2 * lowest  # the kept fraction is not far off
    cnn = onnx.load(str(ZOO / "regnet_tiny.ts.onnx"))
    _, rep2 = prune(cnn, ratio=0.2, calib={"input": x[:, :, :32, :32]}, samples=32, hidden_auto=True)
    assert list(rep2.hidden_auto) == ["0"] and "no LayerNorm" in rep2.hidden["reason"]


def test_hidden_auto_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["prune", str(ZOO / "vit_tiny.ts.onnx"), "--ratio", "0.1,0.2", "--hidden", "auto",
                                    "--synthetic", "-o", str(tmp_path / "o.onnx")])  # fmt: skip
    assert res.exit_code != 0 and "--hidden" in res.output
    assert not any(tmp_path.iterdir())
    res = CliRunner().invoke(main, ["prune", str(ZOO / "vit_tiny.ts.onnx"), "--ratio", "0.2", "--hidden", "sometimes"])
    assert res.exit_code != 0 and "neither a fraction nor auto" in res.output
    for options in ({"hidden_auto": True, "hidden": 0.2}, {"hidden_auto": True, "residual": "auto"}, {"hidden": -0.1},
                    {"hidden_rotation": "twice"}):  # fmt: skip
        with pytest.raises(UsageError, match="hidden"):
            prune(onnx.load(str(ZOO / "vit_tiny.ts.onnx")), ratio=0.2, synthetic=True, **options)


@pytest.mark.parametrize("one", [True, False])
def test_a_post_ln_stream_is_carried_exactly(one: bool) -> None:
    """A post-LN encoder (Hugging Face BERT by TorchScript): each LayerNorm's output is added into the next sum,
    so each residual ``Add`` carries ``γ ⊙ n + β`` through ``Q_inᵀ diag(γ) C Q_out`` ``(k, k)`` and ``β C Q_out``.
    Rotated without slicing (one basis, or one per LayerNorm) the model computes what the original does, at
    several batch sizes and lengths; sliced, it is valid, runs, and prunes end to end."""
    model = fold_constants(onnx.load(str(ZOO / "bert_tiny.ts.onnx")))
    feed = _zoo_feed(model, 2, 8)
    _, stream = _stream(model, {k: v.shape for k, v in feed.items()})
    assert len(stream.norms) == 5 and len(stream.carried) == 4 and stream.centred
    rng = np.random.default_rng(3)  # the export's LayerNorms are 1 and 0: give them a scale and a shift
    scales = {name for n in stream.norms for name in (n.match.scale, n.match.bias) if name}
    for t in model.graph.initializer:
        if t.name in scales:
            v = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((1 + 0.5 * rng.standard_normal(v.shape)).astype(v.dtype), t.name))
    assert [n.project for n in stream.norms] == [False] * 4 + [True]  # the last one's output is the model's
    anchors = sorted(set(stream.segment.values()))
    bases = _orthogonal(stream.size) if one else {a: _orthogonal(stream.size, seed=i) for i, a in enumerate(anchors)}
    out = slice_hidden(model, stream, bases)
    onnx.checker.check_model(out, full_check=True)
    assert sum("__poem_carry" in n.name and n.op_type == "MatMul" for n in out.graph.node) == 4
    for n, t in ((1, 8), (3, 5)):
        f = _zoo_feed(model, n, t)
        want = _runs(model, f)[0]
        np.testing.assert_allclose(_runs(out, f)[0], want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    sliced, rep = prune(onnx.load(str(ZOO / "bert_tiny.ts.onnx")), ratio=0.2, calib=_zoo_feed(model, 32, 8),
                        samples=32, hidden=0.25, hidden_rotation="one" if one else "norm")  # fmt: skip
    assert rep.hidden["sliced"] and (rep.hidden["size"], rep.hidden["kept"]) == (64, 48)
    onnx.checker.check_model(sliced, full_check=True)
    assert np.isfinite(_runs(sliced, _zoo_feed(model, 3, 5))[0]).all()


def test_a_carried_layernorm_read_elsewhere_is_carried_at_full_width() -> None:
    """A post-LN LayerNorm whose output is also a graph output is back-projected to the full width; the residual
    ``Add`` then reads that ``h`` through ``C Q_out`` ``(D, k)``: still exact without slicing."""
    model = fold_constants(onnx.load(str(ZOO / "bert_tiny.ts.onnx")))
    feed = _zoo_feed(model, 2, 8)
    _, stream = _stream(model, {k: v.shape for k, v in feed.items()})
    first = stream.norms[0].match
    model.graph.output.append(onnx.helper.make_tensor_value_info(first.output, onnx.TensorProto.FLOAT, ["n", "t", 64]))
    _, stream = _stream(model, {k: v.shape for k, v in feed.items()})
    assert stream.norms[0].project and len(stream.carried) == 4
    out = slice_hidden(model, stream, _orthogonal(stream.size, seed=4))
    onnx.checker.check_model(out, full_check=True)
    for got, want in zip(_runs(out, feed), _runs(model, feed), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
