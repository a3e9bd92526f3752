"""Models, data splits, preprocessing and metrics of ../shared/docs/BENCHMARK.md.

Development tool (not part of the package).  Each :class:`Task` knows its
model file, how to build the calibration feed (at most ``n`` samples of the
calibration split) and how to score a model on the evaluation split.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

IMNET_MEAN = 127.0
IMNET_STD = 128.0
CIFAR_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
CIFAR_STD = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]


def beside(stem: str | Path, suffix: str) -> Path:
    """``STEM`` + ``suffix``: a tool's ``--out`` is a stem, and ``Path.with_suffix`` would replace a dot in it
    (``--out x/r0.7`` wrote ``x/r0.csv``)."""
    p = Path(stem)
    return p.with_name(p.name + suffix)


def session(path_or_bytes: str | bytes, threads: int = 2, *, spin: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if not spin:  # for timing two sessions in turn (see bench._latency)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])


def _run_batched(sess: ort.InferenceSession, feed: dict[str, np.ndarray], batch: int = 250) -> list[np.ndarray]:
    n = len(next(iter(feed.values())))
    outs: list[list[np.ndarray]] = []
    for s in range(0, n, batch):
        res = sess.run(None, {k: v[s : s + batch] for k, v in feed.items()})
        outs.append(res)
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def top1(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    logits = _run_batched(sess, {sess.get_inputs()[0].name: x})[0]
    return float(100.0 * np.mean(np.argmax(logits, 1) == y))


@dataclass
class Task:
    key: str
    model_file: str
    calib: Callable[[int], dict[str, np.ndarray]]
    evaluate: Callable[[ort.InferenceSession], float]
    #: the evaluation split's model inputs (never calibration data)
    eval_inputs: Callable[[], dict[str, np.ndarray]]
    metric: str = "top-1 %"


def _cifar(shared: Path, key: str, normalise: bool) -> Task:
    cache: dict[str, np.ndarray] = {}

    def load() -> tuple[np.ndarray, np.ndarray]:
        if not cache:
            z = np.load(shared / "data" / "cifar10_test_jpeg10k.npz")
            x = z["x"].astype(np.float32).transpose(0, 3, 1, 2)
            x = (x / 255.0 - CIFAR_MEAN) / CIFAR_STD if normalise else x
            cache["x"], cache["y"] = np.ascontiguousarray(x, dtype=np.float32), z["y"]
        return cache["x"], cache["y"]

    def calib(n: int) -> dict[str, np.ndarray]:
        return {"input": load()[0][5000 : 5000 + n]}

    def evaluate(sess: ort.InferenceSession) -> float:
        x, y = load()
        return top1(sess, x[:5000], y[:5000])

    return Task(key, f"{key}.onnx", calib, evaluate, lambda: {"input": load()[0][:5000]})


def _mnist(shared: Path) -> Task:
    z = np.load(shared / "data" / "mnist5k.npz")
    x = ((z["x"].astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]
    y = z["y"]
    return Task(
        "mnist_cnn",
        "mnist_cnn.onnx",
        lambda n: {"input": np.ascontiguousarray(x[1::2][:n])},
        lambda s: top1(s, np.ascontiguousarray(x[0::2]), y[0::2]),
        lambda: {"input": np.ascontiguousarray(x[0::2])},
    )


def _imagenet(shared: Path) -> Task:
    from PIL import Image

    folder = shared / "data" / "imagenet_sample1000"
    labels: dict[str, int] = json.loads((folder / "labels.json").read_text())["labels"]
    files = sorted(labels)

    def load(parity: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        chosen = [f for f in files if labels[f] % 2 == parity][:n]
        x = np.stack([np.asarray(Image.open(folder / f).convert("RGB"), dtype=np.float32) for f in chosen])
        x = (x.transpose(0, 3, 1, 2) - IMNET_MEAN) / IMNET_STD
        return np.ascontiguousarray(x, dtype=np.float32), np.array([labels[f] for f in chosen])

    def evaluate(sess: ort.InferenceSession) -> float:
        x, y = load(1)
        return top1(sess, x, y)

    return Task(
        "imagenet_efficientnet_lite0",
        "imagenet_efficientnet_lite0.onnx",
        lambda n: {"input": load(0, n)[0]},
        evaluate,
        lambda: {"input": load(1)[0]},
    )


def _minilm(shared: Path) -> Task:
    from scipy.stats import spearmanr

    z = dict(np.load(shared / "data" / "stsb_tokenized.npz"))
    fields = ("input_ids", "attention_mask", "token_type_ids")

    def calib(n: int) -> dict[str, np.ndarray]:
        half = (n + 1) // 2
        return {f: np.concatenate([z[f"dev_a_{f}"][:half], z[f"dev_b_{f}"][:half]])[:n] for f in fields}

    def embed(sess: ort.InferenceSession, side: str) -> np.ndarray:
        feed = {f: z[f"test_{side}_{f}"] for f in fields}
        names = [o.name for o in sess.get_outputs()]
        out = _run_batched(sess, feed, batch=64)
        return out[names.index("sentence_embedding")]

    def evaluate(sess: ort.InferenceSession) -> float:
        a, b = embed(sess, "a"), embed(sess, "b")
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return float(100.0 * spearmanr(np.sum(a * b, 1), z["test_score"]).statistic)

    def eval_inputs() -> dict[str, np.ndarray]:
        return {f: np.concatenate([z[f"test_a_{f}"], z[f"test_b_{f}"]]) for f in fields}

    return Task(
        "all_minilm_l6_v2",
        "all_minilm_l6_v2.onnx",
        calib,
        evaluate,
        eval_inputs,
        metric="Spearman×100",
    )


def _llama_bytes(folder: Path) -> Task:
    """``tools/train_llama_bytes.py``'s decoder: calibration on training windows, next-byte top-1 accuracy on the
    held-out files' windows."""
    calib = np.load(folder / "llama_bytes_calib.npz")["input_ids"]
    ev = np.load(folder / "llama_bytes_eval.npz")["input_ids"]

    def evaluate(sess: ort.InferenceSession) -> float:
        logits = _run_batched(sess, {"input_ids": ev}, batch=100)[0]
        return float(100.0 * np.mean(np.argmax(logits[:, :-1], -1) == ev[:, 1:]))

    return Task(
        "llama_bytes",
        str((folder / "llama_bytes.onnx").resolve()),
        lambda n: {"input_ids": calib[:n]},
        evaluate,
        lambda: {"input_ids": ev},
        metric="next-byte top-1 %",
    )


def tasks(shared: Path, extra: Path | None = None) -> dict[str, Callable[[], Task]]:
    """Factories of every benchmark task (lazy: data loads on first use); with ``extra``, the development
    models found there too (``cifar10_vit``: ``tools/train_vit_cifar.py``, CIFAR data and protocol;
    ``llama_bytes``: ``tools/train_llama_bytes.py``, its own data)."""
    more: dict[str, Callable[[], Task]] = {}
    if extra is not None and (extra / "llama_bytes.onnx").exists():
        more["llama_bytes"] = lambda: _llama_bytes(extra)
    if extra is not None and (extra / "cifar10_vit.onnx").exists():
        vit = str((extra / "cifar10_vit.onnx").resolve())  # absolute: read in place of shared/models
        more["cifar10_vit"] = lambda: replace(_cifar(shared, "cifar10_vit", True), model_file=vit)
    return more | {
        "cifar10_resnet20": lambda: _cifar(shared, "cifar10_resnet20", True),
        "cifar10_resnet56": lambda: _cifar(shared, "cifar10_resnet56", True),
        "cifar10_kerascnn": lambda: _cifar(shared, "cifar10_kerascnn", False),
        "mnist_cnn": lambda: _mnist(shared),
        "imagenet_efficientnet_lite0": lambda: _imagenet(shared),
        "all_minilm_l6_v2": lambda: _minilm(shared),
    }
