"""Export the larger models that ``benchmarks/scale.md`` times onnx-poem on.

Development tool (needs torch and transformers in a separate environment; nothing
in the package needs them).  ResNet-50 and MobileNetV3-Large are written out here
as torchvision defines them (same layers, same MACs), so torchvision, whose
binary builds must match torch's exactly, is not needed.  Weights are seeded
random, BatchNorm statistics included: the models are graphs to time, not
classifiers (EfficientNet-Lite0 is the real one in ``../shared/models``).

* ``resnet50.onnx``: ResNet-50 (torchvision's v1.5: stride on the 3x3 conv), 1x3x224x224
  input (dynamic batch), 4.1 GMACs;
* ``mobilenet_v3_large.onnx``: MobileNetV3-Large, 224x224, 0.22 GMACs;
* ``bert_base.onnx``: a Hugging Face ``BertModel(BertConfig())`` encoder
  (12 layers, hidden 768, FFN 3072), inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` at sequence 128
  (dynamic batch), output the last hidden state: 11 GMACs per sequence.

Usage::

    python tools/export_scale_models.py OUT_DIR [--only resnet50,bert_base]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics (fresh ones are mean 0 / var 1, which folds to nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


def _export(model: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], out: Path) -> None:
    model.eval()
    dyn = {n: {0: "batch"} for n in names}
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(out),
            input_names=names,
            output_names=["output"],
            dynamic_axes={**dyn, "output": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        ]
        cin = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for b in range(blocks):
                layers.append(_Bottleneck(cin, width, stride if b == 0 else 1))
                cin = 4 * width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def _div8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        mid = _div8(c / 4)
        self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hs: bool, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
        if se:
            layers.append(_SE(exp))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


#: MobileNetV3-Large: kernel, expansion, out, SE, hard-swish, stride (Howard et al. 2019, table 1)
_MNV3_LARGE = [
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
]


class MobileNetV3Large(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
        cin = 16
        for k, exp, cout, se, hs, s in _MNV3_LARGE:
            layers.append(_InvertedResidual(cin, k, exp, cout, se, hs, s))
            cin = cout
        layers += [nn.Conv2d(cin, 960, 1, bias=False), nn.BatchNorm2d(960), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def resnet50(out: Path) -> None:
    torch.manual_seed(0)
    m = ResNet50()
    _randomise_bn(m, 0)
    _export(m, (torch.randn(1, 3, 224, 224),), ["input"], out / "resnet50.onnx")


def mobilenet_v3_large(out: Path) -> None:
    torch.manual_seed(0)
    m = MobileNetV3Large()
    _randomise_bn(m, 0)
    _export(m, (torch.randn(1, 3, 224, 224),), ["input"], out / "mobilenet_v3_large.onnx")


class _Bert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(), add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        return self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state


def bert_base(out: Path) -> None:
    torch.manual_seed(0)
    m = _Bert()
    ids = torch.randint(0, 30522, (1, 128))
    _export(
        m,
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        ["input_ids", "attention_mask", "token_type_ids"],
        out / "bert_base.onnx",
    )


MODELS = {"resnet50": resnet50, "mobilenet_v3_large": mobilenet_v3_large, "bert_base": bert_base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", default=",".join(MODELS))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.only.split(","):
        MODELS[name](a.out)


if __name__ == "__main__":
    main()
