"""Export a zoo of models from every exporter family users bring, with random weights and no downloads.

Development tool.  Each family needs its framework, installed in its own environment
(nothing in onnx-poem needs them)::

    python tools/export_zoo.py OUT_DIR --family torch     # torch, torchvision, onnxscript
    python tools/export_zoo.py OUT_DIR --family yolo      # ultralytics (its own exporter)
    python tools/export_zoo.py OUT_DIR --family paddle    # paddlepaddle, paddle2onnx
    python tools/export_zoo.py OUT_DIR --family keras     # tensorflow-cpu 2.15, tf2onnx, onnx 1.16
    python tools/export_zoo.py tests/zoo --family torch --tiny   # the CI subset (committed)

Models are built from the frameworks' own definitions (torchvision, PaddlePaddle's
``paddle.vision.models``, ``keras.applications``, an ultralytics model description)
with seeded random weights; BatchNorm running statistics are randomised as well so a
network's channels differ in importance as in a trained one.  A few architectures
that have no definition in the framework (a U-Net; PaddleOCR-style DB detector and
CRNN recogniser; a Keras MultiHeadAttention encoder) are written here in the
framework's layers, as their authors write them.  Inputs are 64x64 images (128 for
YOLO, 32x100 text lines for the recogniser) with a dynamic batch axis where the
exporter allows it.  ``--tiny`` writes small-width variants (a few hundred kB) for the
tests.  Each file is ``<model>.<exporter>.onnx``; ``tools/check_zoo.py`` prunes them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEED = 0


# --------------------------------------------------------------------------- torch


def _torch_models(tiny: bool) -> dict[str, Callable[[], Any]]:
    import torch
    from torch import nn
    from torchvision import models as tv

    class UNet(nn.Module):
        """A small U-Net: two down levels (conv-BN-ReLU x2, max-pool), a bottleneck, two up levels
        (ConvTranspose, concat with the skip, conv-BN-ReLU x2), a 1x1 head."""

        def __init__(self, w: int = 16) -> None:
            super().__init__()

            def block(cin: int, cout: int) -> nn.Sequential:
                return nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )

            self.d1, self.d2, self.mid = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
            self.u2, self.c2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), block(4 * w, 2 * w)
            self.u1, self.c1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), block(2 * w, w)
            self.head = nn.Conv2d(w, 2, 1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.d1(x)
            b = self.d2(self.pool(a))
            m = self.mid(self.pool(b))
            b = self.c2(torch.cat([self.u2(m), b], 1))
            return self.head(self.c1(torch.cat([self.u1(b), a], 1)))

    if tiny:
        return {
            "regnet_tiny": lambda: tv.RegNet(
                tv.regnet.BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25),
                num_classes=10,
            ),
            "shufflenet_tiny": lambda: tv.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=10),
            "mobilenet_v3_tiny": lambda: tv.mobilenet_v3_small(width_mult=0.25, num_classes=10),
            "unet_tiny": lambda: UNet(4),
        }
    return {
        "resnet18": tv.resnet18,
        "mobilenet_v2": tv.mobilenet_v2,
        "mobilenet_v3_large": tv.mobilenet_v3_large,
        "efficientnet_b0": tv.efficientnet_b0,
        "regnet_y_400mf": tv.regnet_y_400mf,
        "resnext50_32x4d": tv.resnext50_32x4d,
        "shufflenet_v2_x1_0": tv.shufflenet_v2_x1_0,
        "densenet121": tv.densenet121,
        "squeezenet1_1": tv.squeezenet1_1,
        "convnext_tiny": tv.convnext_tiny,
        "vgg11_bn": tv.vgg11_bn,
        "unet": UNet,
    }


def _randomise_torch(model: Any) -> None:
    """Seeded random BatchNorm statistics and affine parameters (the weights are already random)."""
    import torch

    g = torch.Generator().manual_seed(SEED)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1 + 0.3 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))


def export_torch(out: Path, tiny: bool) -> None:
    import torch

    size = 32 if tiny else 64
    for name, make in _torch_models(tiny).items():
        if not _wanted(name):
            continue
        torch.manual_seed(SEED)
        model = make().eval()
        _randomise_torch(model)
        x = torch.randn(2, 3, size, size)
        exporters = ("ts",) if tiny and name != "regnet_tiny" else ("ts", "dynamo")
        for kind in exporters:
            path = out / f"{name}.{kind}.onnx"
            try:
                if kind == "ts":
                    axes = {"input": {0: "N"}, "output": {0: "N"}}
                    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                                      output_names=["output"], dynamic_axes=axes)  # fmt: skip
                else:
                    batch = torch.export.Dim("N", min=1, max=1024)
                    prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["output"],
                                             dynamic_shapes=({0: batch},), optimize=True)  # fmt: skip
                    prog.save(str(path))
                print("wrote", path)
            except Exception as e:  # an exporter's failure is reported, the others go on
                print(f"FAILED {path.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)


# --------------------------------------------------------------------------- yolo


def export_yolo(out: Path, tiny: bool) -> None:
    import shutil
    import tempfile

    import torch
    from ultralytics import YOLO

    for cfg in ("yolov8n.yaml",) if tiny else ("yolov8n.yaml", "yolo11n.yaml"):
        torch.manual_seed(SEED)
        with tempfile.TemporaryDirectory() as tmp:
            desc: Any = cfg
            if tiny:  # the same description at 1/16 of the width (8 channels at least), a third of the depth, 4 classes
                import yaml
                from ultralytics.utils import ROOT

                spec = yaml.safe_load((ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text())
                spec["scales"], spec["nc"] = {"t": [0.33, 0.0625, 512]}, 4
                desc = Path(tmp) / "yolov8t.yaml"
                desc.write_text(yaml.safe_dump(spec))
            model = YOLO(str(desc))  # built from the model description: no weights are downloaded
            _randomise_torch(model.model)
            file = model.export(format="onnx", imgsz=64 if tiny else 128, simplify=False, dynamic=False,
                                opset=17, project=tmp)  # fmt: skip
            path = out / f"{Path(cfg).stem}{'_tiny' if tiny else ''}.ultralytics.onnx"
            shutil.move(str(file), path)
            print("wrote", path)


# --------------------------------------------------------------------------- paddle


def _paddle_models() -> dict[str, tuple[Callable[[], Any], list[int]]]:
    import paddle
    from paddle import nn
    from paddle.vision import models as pv

    def conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1, act: str | None = "hardswish") -> nn.Layer:
        layers: list[nn.Layer] = [
            nn.Conv2D(cin, cout, k, s, (k - 1) // 2, groups=groups, bias_attr=False),
            nn.BatchNorm2D(cout),
        ]
        if act == "hardswish":
            layers.append(nn.Hardswish())
        elif act == "relu":
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    class SE(nn.Layer):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.c1, self.c2 = nn.Conv2D(c, c // 4, 1), nn.Conv2D(c // 4, c, 1)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            return x * nn.functional.hardsigmoid(self.c2(nn.functional.relu(self.c1(self.pool(x)))))

    class LCNet(nn.Layer):
        """PP-LCNet (PaddleClas): depthwise-separable blocks with hardswish, SE in the last two, 1280 head."""

        def __init__(self, scale: float = 0.5) -> None:
            super().__init__()
            cfg = [(3, 32, 64, 1, False), (3, 64, 128, 2, False), (3, 128, 128, 1, False), (3, 128, 256, 2, False),
                   (5, 256, 256, 1, False), (5, 256, 512, 2, True), (5, 512, 512, 1, True)]  # fmt: skip
            c = lambda v: int(v * scale)  # noqa: E731
            self.stem = conv_bn(3, c(32), 3, 2)
            blocks: list[nn.Layer] = []
            for k, cin, cout, s, se in cfg:
                blocks += [conv_bn(c(cin), c(cin), k, s, groups=c(cin))]
                if se:
                    blocks += [SE(c(cin))]
                blocks += [conv_bn(c(cin), c(cout), 1)]
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.last = nn.Conv2D(c(512), 1280, 1)
            self.fc = nn.Linear(1280, 100)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            x = nn.functional.hardswish(self.last(self.pool(self.blocks(self.stem(x)))))
            return self.fc(paddle.flatten(x, 1))

    class DBNet(nn.Layer):
        """A PaddleOCR DB-style text detector: MobileNetV3 backbone stages, an FPN neck (1x1 lateral convs,
        ConvTranspose upsampling: this paddle2onnx fails on nearest interpolation, 3x3 convs, concat), a head
        with two ConvTranspose upsamplings and a sigmoid."""

        def __init__(self) -> None:
            super().__init__()
            self.s1 = nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, 16, 3, 1, 16), conv_bn(16, 24, 1))
            self.s2 = nn.Sequential(conv_bn(24, 24, 3, 2, 24), conv_bn(24, 40, 1))
            self.s3 = nn.Sequential(conv_bn(40, 40, 3, 2, 40), SE(40), conv_bn(40, 80, 1))
            self.lat = nn.LayerList([nn.Conv2D(c, 32, 1, bias_attr=False) for c in (24, 40, 80)])
            self.up = nn.LayerList([nn.Conv2DTranspose(32, 32, 2, stride=2) for _ in range(2)])
            self.smooth = nn.LayerList([nn.Conv2D(32, 8, 3, padding=1, bias_attr=False) for _ in range(3)])
            self.out_up = nn.LayerList([nn.Conv2DTranspose(8, 8, k, stride=k) for k in (2, 4)])
            self.head = nn.Sequential(
                conv_bn(24, 8, 3, act="relu"),
                nn.Conv2DTranspose(8, 8, 2, stride=2),
                nn.BatchNorm2D(8),
                nn.ReLU(),
                nn.Conv2DTranspose(8, 1, 2, stride=2),
                nn.Sigmoid(),
            )

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            c1 = self.s1(x)
            c2 = self.s2(c1)
            c3 = self.s3(c2)
            p3 = self.lat[2](c3)
            p2 = self.lat[1](c2) + self.up[1](p3)
            p1 = self.lat[0](c1) + self.up[0](p2)
            f = [self.smooth[0](p1), self.out_up[0](self.smooth[1](p2)), self.out_up[1](self.smooth[2](p3))]
            return self.head(paddle.concat(f, axis=1))

    class CRNN(nn.Layer):
        """A PaddleOCR CRNN-style recogniser: a mobile conv backbone pooling the height away, the width as
        the sequence, a bidirectional LSTM and a per-step classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(
                conv_bn(3, 16, 3, 1),
                nn.MaxPool2D(2),
                conv_bn(16, 16, 3, 1, 16),
                conv_bn(16, 32, 1),
                nn.MaxPool2D((2, 1)),
                conv_bn(32, 32, 3, 1, 32),
                SE(32),
                conv_bn(32, 64, 1),
                nn.MaxPool2D((2, 1)),
                conv_bn(64, 64, 3, 1, 64),
                conv_bn(64, 96, 1),
                nn.AdaptiveAvgPool2D((1, None)),
            )
            self.rnn = nn.LSTM(96, 48, direction="bidirect")
            self.fc = nn.Linear(96, 40)

        def forward(self, x: paddle.Tensor) -> paddle.Tensor:
            f = self.backbone(x).squeeze(2).transpose([0, 2, 1])  # (N, W, C)
            return self.fc(self.rnn(f)[0])

    return {
        "pplcnet_x0_5": (LCNet, [3, 64, 64]),
        "mobilenet_v3_small": (lambda: pv.mobilenet_v3_small(num_classes=100), [3, 64, 64]),
        "resnet50": (lambda: pv.resnet50(num_classes=100), [3, 64, 64]),
        "shufflenet_v2_x1_0": (lambda: pv.shufflenet_v2_x1_0(num_classes=100), [3, 64, 64]),
        "db_detector": (DBNet, [3, 64, 64]),
        "crnn_recogniser": (CRNN, [3, 32, 100]),
    }


def export_paddle(out: Path, tiny: bool) -> None:
    import numpy as np
    import paddle

    rng = np.random.default_rng(SEED)
    for name, (make, shape) in _paddle_models().items():
        if not _wanted(name):
            continue
        paddle.seed(SEED)
        model = make()
        for layer in model.sublayers():
            if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
                c = layer._mean.shape[0]
                layer._mean.set_value(rng.normal(0, 0.1, c).astype("float32"))
                layer._variance.set_value((0.5 + rng.random(c)).astype("float32"))
                layer.weight.set_value((1 + 0.3 * rng.standard_normal(c)).astype("float32"))
                layer.bias.set_value((0.1 * rng.standard_normal(c)).astype("float32"))
        model.eval()
        path = out / f"{name}.paddle2onnx"
        try:
            spec = [paddle.static.InputSpec([None, *shape], "float32", "x")]
            paddle.onnx.export(model, str(path), input_spec=spec, opset_version=13)
            if not Path(f"{path}.onnx").exists():
                raise RuntimeError("paddle2onnx wrote nothing (see its log above)")
            print("wrote", f"{path}.onnx")
        except Exception as e:
            print(f"FAILED {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)


# --------------------------------------------------------------------------- keras


def export_keras(out: Path, tiny: bool) -> None:
    import numpy as np
    import tensorflow as tf
    import tf2onnx
    from tensorflow import keras
    from tensorflow.keras import layers

    def encoder() -> keras.Model:
        """Two Transformer encoder layers (MultiHeadAttention, LayerNormalization, GELU FFN) on 16 tokens."""
        inp = keras.Input((16, 64), name="input")
        x = inp
        for _ in range(2):
            a = layers.MultiHeadAttention(num_heads=4, key_dim=16)(x, x)
            x = layers.LayerNormalization()(x + a)
            h = layers.Dense(128, activation="gelu")(x)
            x = layers.LayerNormalization()(x + layers.Dense(64)(h))
        return keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling1D()(x)))

    apps = keras.applications
    zoo: dict[str, Callable[[], keras.Model]] = {
        "mobilenet_v2": lambda: apps.MobileNetV2(weights=None, input_shape=(64, 64, 3), classes=100),
        "efficientnet_b0": lambda: apps.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=100),
        "resnet50": lambda: apps.ResNet50(weights=None, input_shape=(64, 64, 3), classes=100),
        "densenet121": lambda: apps.DenseNet121(weights=None, input_shape=(64, 64, 3), classes=100),
        "mha_encoder": encoder,
    }
    rng = np.random.default_rng(SEED)
    for name, make in zoo.items():
        if not _wanted(name):
            continue
        tf.random.set_seed(SEED)
        model = make()
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization):
                c = layer.get_weights()[2].shape[0]
                gamma, beta = 1 + 0.3 * rng.standard_normal(c), 0.1 * rng.standard_normal(c)
                mean, var = 0.1 * rng.standard_normal(c), 0.5 + rng.random(c)
                layer.set_weights([v.astype("float32") for v in (gamma, beta, mean, var)])
        spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input"),)
        path = out / f"{name}.tf2onnx.onnx"
        try:
            tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=str(path))
            print("wrote", path)
        except Exception as e:
            print(f"FAILED {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)


ONLY: set[str] = set()  # --only


def _wanted(name: str) -> bool:
    return not ONLY or name in ONLY


FAMILIES = {"torch": export_torch, "yolo": export_yolo, "paddle": export_paddle, "keras": export_keras}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--tiny", action="store_true", help="small-width variants for the tests")
    ap.add_argument("--only", default="", help="comma-separated model names of the family (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ONLY.update(n for n in args.only.split(",") if n)
    FAMILIES[args.family](args.out, args.tiny)


if __name__ == "__main__":
    main()
