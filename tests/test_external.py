"""Weights outside the protobuf: models with external data, and models past protobuf's 2 GB limit.

The 2 GB case runs on a small model with :data:`onnx_poem.external.PROTO_LIMIT` lowered, so every
path a 2.5 GB model takes (checker, sessions, digest, writing) is exercised here; the real size
is run by ``tools/make_big_mlp.py`` (``benchmarks/scale.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from models import BUILDERS, inputs_for, to_float16
from onnx_poem import external as ext
from onnx_poem import prune
from onnx_poem.cli import main
from onnx_poem.errors import ModelError
from onnx_poem.graph import check_model, segment_session, session
from onnx_poem.modelio import digest


def _plain(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["conv_chain", "residual", "ffn", "depthwise", "float16"])
def test_session_fed_weights_matches_serialised_session(name: str) -> None:
    model = to_float16(BUILDERS["conv_chain"]()) if name == "float16" else BUILDERS[name]()
    stub, names, _ = ext.stub_weights(model, min_bytes=64)
    assert names and len(stub.SerializeToString()) < len(model.SerializeToString())
    x = inputs_for(model, 4).astype(np.float16 if name == "float16" else np.float32)
    feed = {model.graph.input[0].name: x}
    for a, b in zip(session(model).run(None, feed), _plain(model).run(None, feed), strict=True):
        assert np.array_equal(a, b)


def _run_cli(folder: Path, *extra: str):
    args = [str(folder / "m.onnx"), "--ratio", "0.5", "--calib", str(folder / "c.npz"), "-o", str(folder / "o.onnx")]
    return CliRunner().invoke(main, [*args, *extra])


def test_external_input_gives_external_output(external: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ext, "EXTERNAL_MIN_BYTES", 64)  # the test model's tensors are small
    before = {p.name: p.read_bytes() for p in external.iterdir()}
    res = _run_cli(external)
    assert res.exit_code == 0, res.output
    out, data = external / "o.onnx", external / "o.onnx.data"
    assert data.stat().st_size > out.stat().st_size
    onnx.checker.check_model(str(out), full_check=True)
    loaded = onnx.load(str(out))
    assert all(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.load(str(out), load_external_data=False).graph.initializer
        if len(t.dims) > 1
    )
    x = inputs_for(loaded, 4)
    from_file = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(from_file, _plain(loaded).run(None, {"x": x})[0])
    assert {p.name: p.read_bytes() for p in external.iterdir() if p.name in before} == before
    # byte-identical on a second run with the same seed
    res2 = CliRunner().invoke(
        main,
        [
            str(external / "m.onnx"),
            "--ratio",
            "0.5",
            "--calib",
            str(external / "c.npz"),
            "-o",
            str(external / "p.onnx"),
        ],
    )
    assert res2.exit_code == 0, res2.output
    assert (external / "p.onnx.data").read_bytes() == data.read_bytes()
    assert (external / "p.onnx").read_bytes().replace(b"p.onnx.data", b"o.onnx.data") == out.read_bytes()


def test_existing_data_file_is_refused_before_work(external: Path) -> None:
    (external / "o.onnx.data").write_bytes(b"keep")
    res = _run_cli(external)
    assert res.exit_code == 2 and "output data exists" in res.output.strip().splitlines()[-1]
    assert (external / "o.onnx.data").read_bytes() == b"keep" and not (external / "o.onnx").exists()


def test_encode_roundtrip_keeps_every_tensor(tmp_path: Path) -> None:
    model = BUILDERS["residual"]()
    files = ext.encode(model, tmp_path / "r.onnx", external=True)
    for path, chunks in files.items():
        path.write_bytes(b"".join(chunks))
    back = onnx.load(str(tmp_path / "r.onnx"))
    assert [onnx.numpy_helper.to_array(t).tobytes() for t in back.graph.initializer] == [
        onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer
    ]
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset"))
               for t in onnx.load(str(tmp_path / "r.onnx"), load_external_data=False).graph.initializer
               if t.data_location == onnx.TensorProto.EXTERNAL]  # fmt: skip
    assert offsets and all(o % ext.ALIGN == 0 for o in offsets)


@pytest.fixture()
def tiny_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model counts as past protobuf's limit (its weights can no longer be serialised whole)."""
    from onnx_poem import graph

    monkeypatch.setattr(ext, "PROTO_LIMIT", 1000)
    # the small model's tensors count as large ones
    monkeypatch.setattr(ext, "SESSION_MIN_BYTES", 16)
    monkeypatch.setattr(ext, "EXTERNAL_MIN_BYTES", 16)
    monkeypatch.setattr(graph, "STRUCTURE_LIMIT", 4)

    def refuse(self: onnx.ModelProto, **kwargs: object) -> bytes:
        if ext.too_big(self):
            raise AssertionError("a model past the limit was serialised whole")
        return original(self, **kwargs)

    original = onnx.ModelProto.SerializeToString
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", refuse)


@pytest.fixture()
def model() -> onnx.ModelProto:
    return BUILDERS["residual"]()  # built (and shape-inferred) before the limit is lowered


def test_past_the_limit_prunes_without_serialising_weights(
    model: onnx.ModelProto, tiny_limit: None, tmp_path: Path
) -> None:
    assert ext.too_big(model)
    check_model(model, what="m", error=ModelError)
    assert len(digest(model)) == 64 and digest(model) == digest(model)
    x = inputs_for(model, 48)
    pruned, report = prune(model, calib={model.graph.input[0].name: x}, ratio=0.5, samples=48)
    assert report.macs_ratio < 1
    files = ext.encode(pruned, tmp_path / "o.onnx", external=True)
    for path, chunks in files.items():
        path.write_bytes(b"".join(chunks))
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)


def test_checker_past_the_limit_catches_a_short_tensor(model: onnx.ModelProto, tiny_limit: None) -> None:
    t = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    t.raw_data = t.raw_data[:-4]
    with pytest.raises(ModelError, match="bytes, its shape needs"):
        check_model(model, what="m", error=ModelError)


@pytest.mark.parametrize("name", ["conv_chain", "ffn", "depthwise", "reshape_gemm", "keras_flatten"])
def test_sessions_of_stubbed_weights_match_the_serialised_model(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # every weight goes through the stubs here: MatMul/Gemm weights used in place, Conv weights copied (onnxruntime's
    # layout transformation read the stub file's zeros when Conv weights were given in place)
    monkeypatch.setattr(ext, "SESSION_MIN_BYTES", 64)
    model = BUILDERS[name]()
    assert ext.stubbed(model)[1]
    feed = {model.graph.input[0].name: inputs_for(model, 4)}
    want = _plain(model).run(None, feed)
    for optimize in (True, False):
        for a, b in zip(session(model, optimize=optimize).run(None, feed), want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_session_reads_the_shared_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ext, "SESSION_MIN_BYTES", 64)
    model = BUILDERS["ffn"]()
    pool = ext.WeightPool(model)
    name = next(n for n in pool if pool[n].ndim == 2)
    feed = {model.graph.input[0].name: inputs_for(model, 4)}
    assert np.array_equal(session(model, shared=pool).run(None, feed)[0], _plain(model).run(None, feed)[0])
    # a different array under that name: the session computes with it, not with the model's tensor
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    other = (pool[name] * 2).astype(pool[name].dtype)
    t = next(t for t in changed.graph.initializer if t.name == name)
    t.CopyFrom(onnx.numpy_helper.from_array(other, name))
    got = session(model, shared={name: other}).run(None, feed)[0]
    assert np.array_equal(got, _plain(changed).run(None, feed)[0])
    assert not np.array_equal(got, _plain(model).run(None, feed)[0])
    # the pool's arrays are read-only, converted once, and excluding() drops names
    assert not pool[name].flags.writeable and pool[name] is pool[name]
    assert name not in pool.excluding([name]) and set(pool.excluding([name])) == set(pool) - {name}
    with pytest.raises(KeyError):
        pool.excluding([name])[name]


@pytest.mark.parametrize("name", ["conv_chain", "relu_mlp", "residual"])
def test_the_cascade_on_shared_arrays_prunes_as_on_copies(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the cascade's current model shares the original's arrays except for what the rewrite changed (a
    # reconstructed consumer keeps its shape where only its values change): same bytes as with no sharing at all
    model = BUILDERS[name]()
    x = inputs_for(model, 64)
    want, _ = prune(model, ratio=0.5, calib=x, prune_residual=True)
    monkeypatch.setattr(ext, "SESSION_MIN_BYTES", 64)
    got, _ = prune(model, ratio=0.5, calib=x, prune_residual=True)
    assert got.SerializeToString() == want.SerializeToString()


def test_a_weight_read_inside_an_if_body_stays_in_the_session_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment cut from a model whose If body reads an outer-scope weight: the cut model holds that weight in
    the body (onnx-graphsurgeon moves it there), where no value given to the session reaches it, so it is not
    stubbed (Silero VAD's decoder LSTM: every PRO probe failed to load)."""
    monkeypatch.setattr(ext, "SESSION_MIN_BYTES", 64)
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    out = onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["N", 8])
    then_g = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["h", "w"], ["r"])], "then", [], [out])
    else_g = onnx.helper.make_graph([onnx.helper.make_node("Neg", ["h"], ["r"])], "else", [], [out])
    g = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Relu", ["x"], ["h"]),
            onnx.helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        "cf",
        [
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8]),
            onnx.helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
        ],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8])],
        [w],
    )
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])
    x = rng.standard_normal((3, 8)).astype(np.float32)
    cut = segment_session(model, ["y"], cut={"h": np.dtype(np.float32)}, dtypes={})
    for cond in (True, False):
        want = _plain(model).run(None, {"x": x, "cond": np.array(cond)})[0]
        got = cut.run(None, {"h": np.maximum(x, 0), "cond": np.array(cond)})[0]
        np.testing.assert_allclose(got, want, rtol=1e-6)
