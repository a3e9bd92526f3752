"""Train a small ViT on CIFAR-10 images and export it to ONNX, for the issue-12 check on real images.

Development tool, run in the torch/transformers environment (nothing in the package needs them)::

    python tools/train_vit_cifar.py OUT_DIR [--epochs 20] [--threads 2]

No pretrained ViT can be downloaded here, so one is trained: Hugging Face ``ViTModel`` (32x32 images,
4x4 patches: 64 patch tokens and a class token, hidden size 96, 4 pre-LayerNorm blocks of 6 heads of
16 channels, GELU MLPs of 384, a linear head on the class token), on the calibration split of
BENCHMARK.md's CIFAR-10 JPEG images (``x[5000:10000]``, random crops and flips), preprocessed as the
CIFAR ResNets are (``x/255`` normalised by the ImageNet mean and std), so ``tools/bench.py`` evaluates it
on ``x[0:5000]`` like them.  Calibrating on images the model was trained on is the usual setting of
pruning without retraining.  Exported by TorchScript (``torch.onnx.export(dynamo=False)``, opset 17,
dynamic batch) as ``OUT_DIR/cifar10_vit.onnx``; the evaluation split's accuracy is printed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_models import HFViT

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]


def cifar_vit() -> HFViT:
    """The ViT of the module docstring (``tools/export_models.py``'s ``HFViT`` with this configuration)."""
    return HFViT(
        patch_size=4,
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=6,
        intermediate_size=384,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _data(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(shared / "data" / "cifar10_test_jpeg10k.npz")
    x = (z["x"].astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x, dtype=np.float32), z["y"]


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crops and horizontal flips."""
    n = x.shape[0]
    padded = nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (2, n), generator=g)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = _data(a.shared)
    xt, yt = torch.from_numpy(x[5000:]), torch.from_numpy(y[5000:])
    model = cifar_vit()
    steps = a.epochs * math.ceil(len(xt) / 128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        total = 0.0
        for s in range(0, len(xt), 128):
            idx = perm[s : s + 128]
            loss = nn.functional.cross_entropy(model(_augment(xt[idx], g)), yt[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(xt):.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[s : s + 500])) for s in range(0, 5000, 500)])
    print(f"evaluation split top-1: {100 * float((logits.argmax(1).numpy() == y[:5000]).mean()):.2f} %")
    a.out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.from_numpy(x[:2]),),
        str(a.out / "cifar10_vit.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        opset_version=17,
        dynamo=False,
    )
    print(a.out / "cifar10_vit.onnx")


if __name__ == "__main__":
    main()
