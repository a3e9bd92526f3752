"""Write an MLP larger than protobuf's 2 GB limit, stored with external data (issue 11, item 3).

Development tool (numpy and onnx only).  ``depth`` Gemm layers of ``width x width``
float32 weights with ReLU between them (seeded random, scaled to keep activations
of order one), input ``(batch, width)``, output ``(batch, classes)``; the weights go
to ``<out>.data`` beside the model (one file, 4 KiB-aligned), as exporters write
large models.  Also writes ``<out>.calib.npz`` (``--samples`` Gaussian rows) for a run.

Usage::

    python tools/make_big_mlp.py /work/big/mlp_2g5.onnx --width 4096 --depth 38
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(width: int, depth: int, classes: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "input"
    for i in range(depth):
        w = (rng.standard_normal((width, width), dtype=np.float32) * np.float32(np.sqrt(2.0 / width))).astype(
            np.float32
        )
        b = (0.01 * rng.standard_normal(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [f"fc{i}"], transB=1))
        nodes.append(helper.make_node("Relu", [f"fc{i}"], [f"relu{i}"]))
        x = f"relu{i}"
    w = (rng.standard_normal((classes, width)) * np.sqrt(1.0 / width)).astype(np.float32)
    inits += [
        numpy_helper.from_array(w, "head.weight"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "head.bias"),
    ]
    nodes.append(helper.make_node("Gemm", [x, "head.weight", "head.bias"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--depth", type=int, default=38)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    model = build(a.width, a.depth, a.classes, a.seed)
    onnx.save_model(
        model, str(a.out), save_as_external_data=True, all_tensors_to_one_file=True, location=a.out.name + ".data"
    )
    x = np.random.default_rng(a.seed + 1).standard_normal((a.samples, a.width)).astype(np.float32)
    np.savez(a.out.with_suffix(".calib.npz"), input=x)
    size = a.out.stat().st_size + Path(str(a.out) + ".data").stat().st_size
    print(f"wrote {a.out} (+ .data, {size / 1e9:.2f} GB in all)")


if __name__ == "__main__":
    main()
