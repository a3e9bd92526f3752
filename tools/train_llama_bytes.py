"""Train a small LLaMA-style decoder on bytes of Python source and export it to ONNX, to measure ``--hidden`` (and
heads, FFN neurons) on a trained RMSNorm decoder with grouped-query attention.

Development tool, run in the torch/transformers environment (nothing in the package needs them)::

    python tools/train_llama_bytes.py OUT_DIR [--minutes 15] [--threads 2]

No pretrained decoder can be downloaded here, so one is trained: Hugging Face ``LlamaForCausalLM`` (256 byte
tokens, hidden size 128, 4 blocks of 4 query heads sharing 2 key/value heads of 32 channels, SiLU-gated MLPs of
352, RMSNorm, rotary positions, an untied output layer) on windows of 128 bytes of the Python standard library's
sources (``*.py`` under ``sysconfig``'s ``stdlib``, sorted by path: every tenth file is evaluation text, the rest
training text).  It writes ``OUT_DIR/llama_bytes.onnx`` (TorchScript, opset 17, input ``input_ids (N, T)``, output
``logits (N, T, 256)``, dynamic batch and length), ``OUT_DIR/llama_bytes_calib.npz`` (``input_ids`` ``(4096, 128)``:
training windows, the calibration data) and ``OUT_DIR/llama_bytes_eval.npz`` (``(1000, 128)`` evaluation windows);
``tools/bench.py --extra OUT_DIR`` evaluates it as ``llama_bytes`` (next-byte top-1 accuracy on the evaluation
windows) and prints the evaluation accuracy here.
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf
from torch import nn

SEQ = 128


def _text(root: Path) -> tuple[bytes, bytes]:
    """Training and evaluation bytes: every tenth source file (sorted by path) is evaluation text."""
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    train, held = [], []
    for i, p in enumerate(files):
        (held if i % 10 == 0 else train).append(p.read_bytes())
    return b"\n".join(train), b"\n".join(held)


def _windows(data: bytes, n: int, seed: int) -> np.ndarray:
    """``n`` windows of :data:`SEQ` bytes at seeded random offsets, ``(n, SEQ)`` int64."""
    arr = np.frombuffer(data, dtype=np.uint8)
    starts = np.random.default_rng(seed).integers(0, len(arr) - SEQ, n)
    return np.stack([arr[s : s + SEQ] for s in starts]).astype(np.int64)


class Logits(nn.Module):
    """``LlamaForCausalLM`` returning its logits only (no cache): ``input_ids (N, T)`` → ``(N, T, 256)``."""

    def __init__(self) -> None:
        super().__init__()
        cfg = tf.LlamaConfig(
            vocab_size=256,
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=SEQ,
            tie_word_embeddings=False,
        )
        self.m = tf.LlamaForCausalLM(cfg)
        self.m.config._attn_implementation = "eager"  # the exporters' attention (as tools/export_models.py)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(input_ids)  # the causal mask from a full mask (no padding in these windows)
        return self.m(input_ids=input_ids, attention_mask=mask, use_cache=False).logits  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    train, held = _text(Path(sysconfig.get_paths()["stdlib"]))
    calib, evals = _windows(train, 4096, 1), _windows(held, 1000, 2)
    np.savez_compressed(a.out / "llama_bytes_calib.npz", input_ids=calib)
    np.savez_compressed(a.out / "llama_bytes_eval.npz", input_ids=evals)
    model = Logits()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    arr = np.frombuffer(train, dtype=np.uint8)
    rng = np.random.default_rng(0)
    t0, step, budget = time.time(), 0, 60.0 * a.minutes
    while (elapsed := time.time() - t0) < budget:
        for g in opt.param_groups:  # cosine decay over the time budget
            g["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0)))
        starts = rng.integers(0, len(arr) - SEQ - 1, 32)
        x = torch.from_numpy(np.stack([arr[s : s + SEQ + 1] for s in starts]).astype(np.int64))
        loss = nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.3f} ({elapsed / 60:.1f} min)", flush=True)
    model.eval()
    with torch.no_grad():
        ev = torch.from_numpy(evals)
        pred = torch.cat([model(ev[i : i + 100]).argmax(-1) for i in range(0, len(ev), 100)])
        acc = 100.0 * float((pred[:, :-1] == ev[:, 1:]).float().mean())
    print(f"{step} steps; next-byte top-1 accuracy on the evaluation windows: {acc:.2f} %")
    torch.onnx.export(
        model,
        (torch.from_numpy(calib[:2]),),
        str(a.out / "llama_bytes.onnx"),
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "N", 1: "T"}, "logits": {0: "N", 1: "T"}},
        opset_version=17,
        dynamo=False,
    )


if __name__ == "__main__":
    main()
