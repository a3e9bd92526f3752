"""Export architectures that are not in ../shared, to check onnx-poem on other exporters' patterns.

Development tool: needs torch (``pip install torch==2.13.0`` takes the CPU wheel on
disk) and onnxscript for the dynamo exporter; nothing in the package needs them.
Weights are seeded random (BatchNorm statistics included), so the models are
graphs to prune, not classifiers.  Each model is written twice: with the
TorchScript exporter (``*.ts.onnx``) and the dynamo exporter (``*.dynamo.onnx``).

    python tools/export_models.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn


class SE(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cexp: int, cout: int, stride: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, cexp, 1, bias=False), nn.BatchNorm2d(cexp), nn.Hardswish())
        self.dw = nn.Sequential(
            nn.Conv2d(cexp, cexp, 3, stride, 1, groups=cexp, bias=False), nn.BatchNorm2d(cexp), nn.Hardswish()
        )
        self.se = SE(cexp)
        self.project = nn.Sequential(nn.Conv2d(cexp, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.res else y


class MobileNetV3ish(nn.Module):
    """Hardswish, depthwise, squeeze-excite with hardsigmoid, residual adds, BN everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 48, 24, 2),
            InvertedResidual(24, 72, 24, 1),
            InvertedResidual(24, 96, 40, 2),
            InvertedResidual(40, 120, 40, 1),
        )
        self.head = nn.Sequential(nn.Conv2d(40, 160, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(160, 128), nn.Hardswish(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


class DenseUNetish(nn.Module):
    """SiLU, channel concat (dense block), ConvTranspose upsampling with a concat skip, PReLU, GroupNorm-free."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, 1, 1)
        self.c2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.c3 = nn.Conv2d(32, 32, 3, 2, 1)
        self.up = nn.ConvTranspose2d(32, 16, 2, 2)
        self.act = nn.PReLU(16)
        self.c4 = nn.Conv2d(32, 8, 3, 1, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.silu(self.c1(x))
        d = torch.cat([a, nn.functional.silu(self.c2(a))], dim=1)
        down = nn.functional.silu(self.c3(d))
        u = self.act(self.up(down))
        return self.out(torch.relu(self.c4(torch.cat([u, a], dim=1))))


class TinyEncoder(nn.Module):
    """A transformer encoder layer (GELU FFN, LayerNorm, attention) with mean pooling and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 96, dropout=0.0, activation="gelu", batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.proj(x)).mean(dim=1))


class HFEncoder(nn.Module):
    """A Hugging Face transformer (``transformers``, random weights, small config) on token ids with an
    attention mask: BERT (post-LayerNorm encoder, GELU FFN) or Llama (decoder: causal mask, RMSNorm,
    rotary positions, SiLU-gated FFN, grouped-query attention with 2 key/value heads for 4 query heads);
    mean of the last hidden states."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        import transformers as tf

        common = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
        if kind == "bert":
            cfg = tf.BertConfig(vocab_size=100, max_position_embeddings=64, **common)
            self.m = tf.BertModel(cfg, add_pooling_layer=False)
        else:
            cfg = tf.LlamaConfig(vocab_size=100, max_position_embeddings=64, num_key_value_heads=2, **common)
            self.m = tf.LlamaModel(cfg)
        self.m.config._attn_implementation = "eager"

    def forward(self, input: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.m(input_ids=input, attention_mask=attention_mask).last_hidden_state
        return (h * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)


class HFViT(nn.Module):
    """A ViT image encoder (``transformers.ViTModel``: patch-embedding conv, class token, pre-LayerNorm
    blocks with GELU MLPs; 32x32 images, 8x8 patches, random weights) with a linear head on the class token.
    ``config``: ``ViTConfig`` fields instead of these (``tools/train_vit_cifar.py`` trains a larger one)."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        import transformers as tf

        fields = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
        cfg = tf.ViTConfig(**{**fields, "intermediate_size": 128, **config})
        self.m = tf.ViTModel(cfg, add_pooling_layer=False)
        self.m.config._attn_implementation = "eager"
        self.head = nn.Linear(cfg.hidden_size, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.head(self.m(pixel_values=input).last_hidden_state[:, 0])


MODELS = {
    "mobilenetv3ish": (MobileNetV3ish, (1, 3, 64, 64)),
    "denseunetish": (DenseUNetish, (1, 3, 32, 32)),
    "tinyencoder": (TinyEncoder, (1, 16, 12)),
    "vit_tiny": (HFViT, (1, 3, 32, 32)),
}

#: token models: (factory, sequence length); inputs ``input`` (ids) and ``attention_mask``, both (N, T)
TOKEN_MODELS = {
    "bert_tiny": (lambda: HFEncoder("bert"), 16),
    "llama_gqa_tiny": (lambda: HFEncoder("llama"), 16),
}


def _randomise(model: nn.Module, x: torch.Tensor) -> None:
    """Random BN affine parameters, and BN statistics measured on ``x`` so activations stay normalised
    (random statistics make a deep net's output nearly constant, which would make agreement checks vacuous)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration forward
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, (cls, shape) in MODELS.items():
        model = cls()
        _randomise(model, torch.randn(64, *shape[1:]))
        x = torch.randn(*shape)
        axes = {"input": {0: "N"}, "output": {0: "N"}}
        torch.onnx.export(
            model,
            (x,),
            str(out / f"{name}.ts.onnx"),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        torch.onnx.export(
            model,
            (x,),
            str(out / f"{name}.dynamo.onnx"),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("N", min=1, max=1024)},),
            opset_version=18,
            dynamo=True,
        )
    for name, (factory, tokens) in TOKEN_MODELS.items():
        model = factory().eval()
        ids = torch.randint(0, 100, (2, tokens))
        mask = torch.ones(2, tokens, dtype=torch.int64)
        names = {"input_names": ["input", "attention_mask"], "output_names": ["output"]}
        for exporter in ("ts", "dynamo"):
            try:
                if exporter == "ts":
                    axes = {"input": {0: "N", 1: "T"}, "attention_mask": {0: "N", 1: "T"}, "output": {0: "N"}}
                    torch.onnx.export(
                        model,
                        (ids, mask),
                        str(out / f"{name}.ts.onnx"),
                        dynamic_axes=axes,
                        opset_version=17,
                        dynamo=False,
                        **names,
                    )
                else:
                    n, t = torch.export.Dim("N", min=1, max=64), torch.export.Dim("T", min=2, max=32)
                    torch.onnx.export(
                        model,
                        (ids, mask),
                        str(out / f"{name}.dynamo.onnx"),
                        opset_version=18,
                        dynamo=True,
                        dynamic_shapes=({0: n, 1: t}, {0: n, 1: t}),
                        **names,
                    )
            except Exception as e:  # an exporter that cannot export the model is a row of its own
                print(f"{name} ({exporter}): export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/exported"))
