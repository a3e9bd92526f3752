"""The CI subset of the exporter zoo: real exporters' graphs, pruned end to end at ``--ratio 0.3``.

``tests/zoo`` holds small models written by ``tools/export_zoo.py`` (random weights): ``--family torch --tiny``
(TorchScript and dynamo: RegNet with grouped convs and squeeze-excite, ShuffleNetV2 with channel shuffles and
computed ``chunk`` bounds, MobileNetV3 with hardswish and SE, a U-Net with ConvTranspose), ``--family yolo
--tiny`` (ultralytics' own exporter: C2f blocks with and without shortcut, SPPF, nearest upsampling),
and the zoo's smallest models of the other families: ``--family paddle --only db_detector,crnn_recogniser``
(paddle2onnx: ConvTranspose FPN, LSTM, squeezed height) and ``--family keras --only mha_encoder`` (tf2onnx:
MultiHeadAttention).  ``keras_branchy_cnn.tf2onnx.onnx`` (tf2onnx: NHWC transposes, GELU and swish, a
concatenation, Keras ``Flatten`` before a dense layer) and ``keras_encoder.tf2onnx.onnx`` (``MultiHeadAttention``
as today's tf2onnx writes it: its einsums with the heads merged into the batch axis) come from
``tools/export_keras.py``.  Regenerate them with those commands.  ``bert_tiny.ts.onnx`` and ``vit_tiny.ts.onnx``
(Hugging Face BERT and ViT, TorchScript: attention heads) and ``llama_gqa_tiny.dynamo.onnx`` (Hugging Face Llama
by dynamo: grouped-query attention, rotary positions, a causal mask; its external data stored inline) and
``llama_gqa_tiny.ts.onnx`` (the same by TorchScript, batch and sequence length dynamic) and
``tinyencoder.dynamo.onnx`` (``nn.TransformerEncoderLayer`` by dynamo, batch fixed at 1, its data stored
inline) come from ``tools/export_models.py``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_poem import prune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from check_exporters import random_inputs  # the exporters check's seeded inputs: floats, token ids, masks

ZOO = Path(__file__).parent / "zoo"
MODELS = sorted(ZOO.glob("*.onnx"))


def test_the_zoo_is_there() -> None:
    assert len(MODELS) >= 11


def test_keras_flatten_is_pruned_through() -> None:
    """tf2onnx's ``Flatten`` (``Transpose`` to channel-last, then ``Reshape``) before a ``MatMul``: the conv that
    feeds it is pruned, with the dense layer's rows (it stopped at the ``Reshape`` before)."""
    model = onnx.load(str(ZOO / "keras_branchy_cnn.tf2onnx.onnx"))
    x = random_inputs(model, 64)
    pruned, rep = prune(model, ratio=0.3, calib=x, samples=64, allocation="uniform")
    flat = [g for g in rep.groups if g["consumers"] == ["functional_1_1/dense_2_1/MatMul"]]
    assert len(flat) == 1 and flat[0]["kept"] < flat[0]["channels"], rep.groups
    assert not any("Reshape" in u["reason"] for u in rep.unprunable), rep.unprunable
    out = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {k: v[:5] for k, v in x.items()}
    )[0]
    assert out.shape == (5, 10) and np.isfinite(out).all()


@pytest.mark.parametrize("name", ["bert_tiny.ts.onnx", "vit_tiny.ts.onnx"])
def test_transformers_lose_heads(name: str) -> None:
    """Hugging Face BERT and ViT by TorchScript (computed head reshapes): head groups found and pruned."""
    model = onnx.load(str(ZOO / name))
    _, rep = prune(model, ratio=0.5, calib=random_inputs(model, 64), samples=64, allocation="uniform")
    heads = [g for g in rep.groups if g["unit"] == "head"]
    assert len(heads) == 2 and all(g["kept"] < g["channels"] for g in heads), heads


def test_keras_multi_head_attention_loses_heads() -> None:
    """Keras ``MultiHeadAttention`` by tf2onnx: each einsum is ``Reshape`` to ``(N·H, T, d)`` → ``MatMul`` →
    ``Reshape`` to ``(N, H, T, ·, 1)`` (computed shapes, folded to ``[-1, ...]``).  The MatMuls run on the
    unmerged operands (``onnx_poem.unmerge``), so the heads are one group; pruned to half, the model runs at
    every batch size, and with nothing pruned it reproduces the original."""
    model = onnx.load(str(ZOO / "keras_encoder.tf2onnx.onnx"))
    x = random_inputs(model, 64)
    pruned, rep = prune(model, ratio=0.5, calib=x, samples=64, allocation="uniform")
    heads = [g for g in rep.groups if g["unit"] == "head"]
    assert len(heads) == 1 and heads[0]["kept"] == heads[0]["channels"] // 2, rep.groups
    assert not any("Reshape" in u["reason"] for u in rep.unprunable), rep.unprunable
    sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3, 5):
        assert sess.run(None, {k: v[:n] for k, v in x.items()})[0].shape == (n, 10)
    same, _ = prune(model, ratio=0.0, calib=x, samples=64)
    feed = {k: v[:7] for k, v in x.items()}
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
            for m in (model, same))  # fmt: skip
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_older_keras_multi_head_attention_loses_heads() -> None:
    """The zoo's ``mha_encoder`` (an older tf2onnx): q, k and v are ``Gemm`` on ``(N·T, E)`` (``beta = 0``,
    no bias) split straight into ``(N, T, H, d, 1)``, the scores an ``Einsum``, one output projection an
    ``Einsum`` too (read as ``Reshape → MatMul``, ``onnx_poem.einsum``).  Both blocks lose half their heads;
    the refit output projections get a bias of their own (added with ``beta = 1``) and the model runs at
    every batch size."""
    model = onnx.load(str(ZOO / "mha_encoder.tf2onnx.onnx"))
    x = random_inputs(model, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a bias divided by beta = 0 warned here
        pruned, rep = prune(model, ratio=0.5, calib=x, samples=64, allocation="uniform")
    heads = [g for g in rep.groups if g["unit"] == "head"]
    assert len(heads) == 2 and all(g["kept"] == g["channels"] // 2 for g in heads), rep.groups
    gemms = [n for n in pruned.graph.node if n.op_type == "Gemm" and len(n.input) == 3 and n.input[2]]
    assert all(next(a.f for a in n.attribute if a.name == "beta") == 1.0 for n in gemms)
    sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        out = sess.run(None, {k: v[:n] for k, v in x.items()})[0]
        assert out.shape == (n, 10) and np.isfinite(out).all()


def test_fused_in_proj_by_dynamo_loses_heads() -> None:
    """``nn.TransformerEncoderLayer`` by dynamo (batch fixed at 1): the fused ``in_proj`` is split into q, k
    and v layers (``onnx_poem.fused``), so the heads are a group and lose half their number."""
    model = onnx.load(str(ZOO / "tinyencoder.dynamo.onnx"))
    x = random_inputs(model, 64)
    pruned, rep = prune(model, ratio=0.5, calib=x, samples=64, allocation="uniform")
    heads = [g for g in rep.groups if g["unit"] == "head"]
    assert len(heads) == 1 and heads[0]["kept"] == heads[0]["channels"] // 2, rep.groups
    out = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {k: v[:1] for k, v in x.items()}
    )[0]
    assert np.isfinite(out).all()


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_zoo_model_prunes_at_ratio_0_3(path: Path) -> None:
    model = onnx.load(str(path))
    x = random_inputs(model, 64)
    pruned, rep = prune(model, ratio=0.3, calib=x, samples=64)
    onnx.checker.check_model(pruned, full_check=True)
    sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # YOLO: exported for batch 1
    outs = sess.run(None, {k: v[: fixed or 2] for k, v in x.items()})
    assert all(np.isfinite(o).all() for o in outs)
    assert rep.macs_after < 0.95 * rep.macs_before  # every model of the subset loses MACs
    assert all(u["reason"] and "internal" not in u["reason"].lower() for u in rep.unprunable)
    assert not any("left unpruned:" in u["reason"] for u in rep.unprunable), rep.unprunable  # no group failed


@pytest.mark.parametrize("name", ["llama_gqa_tiny.dynamo.onnx", "llama_gqa_tiny.ts.onnx"])
def test_llama_grouped_query_attention_loses_key_value_heads(name: str) -> None:
    """Llama (4 query heads sharing 2 key/value heads, rotary positions, causal mask) by dynamo and by
    TorchScript: each layer's key/value heads with their query heads are one group, pruned in the cascade
    without a failure (dynamo's one Expand shape for every layer is given to each reader first; TorchScript
    computes the rotary Slice bounds and the Expand shape from the sequence length's Shape, folded where they
    do not depend on it), and the model runs at other batch sizes and sequence lengths."""
    model = onnx.load(str(ZOO / name))
    x = random_inputs(model, 64)
    pruned, rep = prune(model, ratio=0.5, calib=x, samples=64, allocation="uniform")
    kv = [g for g in rep.groups if g["unit"] == "key/value head"]
    assert len(kv) == 2 and all(g["kept"] < g["channels"] and g["query_heads_per_unit"] == 2 for g in kv), kv
    assert not any("left unpruned:" in u["reason"] for u in rep.unprunable), rep.unprunable
    sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    for n, t in ((1, 3), (3, 11)):
        out = sess.run(None, {k: v[:n, :t] for k, v in x.items()})[0]
        assert out.shape[0] == n and np.isfinite(out).all()


def test_a_target_overshot_by_coarse_units_is_said() -> None:
    """The zoo's ViT has 4 heads per layer: a uniform allocation at a 0.5 MACs target reaches about 0.41."""
    model = onnx.load(str(ZOO / "vit_tiny.ts.onnx"))
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    _, rep = prune(model, target_macs=0.5, calib={"input": x}, samples=64, allocation="uniform")
    assert rep.macs_ratio < 0.48
    assert any(w.startswith("pruned more than asked: asked for MACs 0.500") for w in rep.warnings), rep.warnings
    _, met = prune(model, target_macs=0.6, calib={"input": x}, samples=64, allocation="uniform")
    assert abs(met.macs_ratio - 0.6) < 0.02 and not any("more than asked" in w for w in met.warnings)
