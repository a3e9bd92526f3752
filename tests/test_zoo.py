"""The CI subset of the exporter zoo: real exporters' graphs, pruned end to end at ``--ratio 0.3``.

``tests/zoo`` holds small models written by ``tools/export_zoo.py`` (random weights): ``--family torch --tiny``
(TorchScript and dynamo: RegNet with grouped convs and squeeze-excite, ShuffleNetV2 with channel shuffles and
computed ``chunk`` bounds, MobileNetV3 with hardswish and SE, a U-Net with ConvTranspose), ``--family yolo
--tiny`` (ultralytics' own exporter: C2f blocks with and without shortcut, SPPF, nearest upsampling),
and the zoo's smallest models of the other families: ``--family paddle --only db_detector,crnn_recogniser``
(paddle2onnx: ConvTranspose FPN, LSTM, squeezed height) and ``--family keras --only mha_encoder`` (tf2onnx:
MultiHeadAttention).  Regenerate them with those commands.  ``bert_tiny.ts.onnx`` and ``vit_tiny.ts.onnx``
(Hugging Face BERT and ViT, TorchScript: attention heads) come from ``tools/export_models.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_poem import prune

ZOO = Path(__file__).parent / "zoo"
MODELS = sorted(ZOO.glob("*.onnx"))


def _calibration(model: onnx.ModelProto, n: int) -> dict[str, np.ndarray]:
    """Standard-normal floats; token ids below 100 and masks of 4-16 valid tokens for integer inputs
    (symbolic dimensions after the batch: 16)."""
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    out = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            dims = [d.dim_value or 16 for d in vi.type.tensor_type.shape.dim[1:]]
            if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                out[vi.name] = rng.standard_normal((n, *dims)).astype(np.float32)
            elif "mask" in vi.name.lower():
                valid = rng.integers(4, dims[-1] + 1, n)
                out[vi.name] = (np.arange(dims[-1])[None, :] < valid[:, None]).astype(np.int64)
            else:
                out[vi.name] = rng.integers(0, 100, (n, *dims)).astype(np.int64)
    return out


def test_the_zoo_is_there() -> None:
    assert len(MODELS) >= 11


@pytest.mark.parametrize("name", ["bert_tiny.ts.onnx", "vit_tiny.ts.onnx"])
def test_transformers_lose_heads(name: str) -> None:
    """Hugging Face BERT and ViT by TorchScript (computed head reshapes): head groups found and pruned."""
    model = onnx.load(str(ZOO / name))
    _, rep = prune(model, ratio=0.5, calib=_calibration(model, 64), samples=64, allocation="uniform")
    heads = [g for g in rep.groups if g["unit"] == "head"]
    assert len(heads) == 2 and all(g["kept"] < g["channels"] for g in heads), heads


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_zoo_model_prunes_at_ratio_0_3(path: Path) -> None:
    model = onnx.load(str(path))
    x = _calibration(model, 64)
    pruned, rep = prune(model, ratio=0.3, calib=x, samples=64)
    onnx.checker.check_model(pruned, full_check=True)
    sess = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    fixed = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # YOLO: exported for batch 1
    outs = sess.run(None, {k: v[: fixed or 2] for k, v in x.items()})
    assert all(np.isfinite(o).all() for o in outs)
    assert rep.macs_after < 0.95 * rep.macs_before  # every model of the subset loses MACs
    assert all(u["reason"] and "internal" not in u["reason"].lower() for u in rep.unprunable)
    assert not any("left unpruned:" in u["reason"] for u in rep.unprunable), rep.unprunable  # no group failed
