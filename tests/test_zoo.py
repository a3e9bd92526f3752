"""The CI subset of the exporter zoo: real exporters' graphs, pruned end to end at ``--ratio 0.3``.

``tests/zoo`` holds small models written by ``tools/export_zoo.py`` (random weights): ``--family torch --tiny``
(TorchScript and dynamo: RegNet with grouped convs and squeeze-excite, ShuffleNetV2 with channel shuffles and
computed ``chunk`` bounds, MobileNetV3 with hardswish and SE, a U-Net with ConvTranspose), ``--family yolo
--tiny`` (ultralytics' own exporter: C2f blocks with and without shortcut, SPPF, nearest upsampling),
and the zoo's smallest models of the other families: ``--family paddle --only db_detector,crnn_recogniser``
(paddle2onnx: ConvTranspose FPN, LSTM, squeezed height) and ``--family keras --only mha_encoder`` (tf2onnx:
MultiHeadAttention).  Regenerate them with those commands.
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
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    out = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim[1:]]
            out[vi.name] = rng.standard_normal((n, *dims)).astype(np.float32)
    return out


def test_the_zoo_is_there() -> None:
    assert len(MODELS) >= 9


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
