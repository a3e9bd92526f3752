"""Export Keras models through tf2onnx, to check onnx-poem on TensorFlow's graph patterns.

Development tool, run in its own environment (``pip install tensorflow-cpu tf2onnx``);
nothing in the package needs TensorFlow. tf2onnx keeps Keras' NHWC layout at the
input and output and inserts ``Transpose`` nodes around the convolutions; Keras
``Dense`` layers become ``MatMul`` + ``Add``; BatchNormalization is folded or kept
per channel; ``swish`` becomes ``x·Sigmoid(x)``. Weights are seeded random (BN
statistics included): the models are graphs to prune, not classifiers.

    python tools/export_keras.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow import keras
from tensorflow.keras import layers


def _bn(x: tf.Tensor) -> tf.Tensor:
    return layers.BatchNormalization()(x)


def mobilenet_like() -> keras.Model:
    """Stem → two inverted residual blocks (expand, depthwise, squeeze-excite, project, Add) → head."""
    inp = keras.Input((32, 32, 3), name="input")
    x = layers.ReLU(6.0)(_bn(layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inp)))
    for cexp, stride in ((64, 1), (96, 1)):
        h = layers.ReLU(6.0)(_bn(layers.Conv2D(cexp, 1, use_bias=False)(x)))
        h = layers.ReLU(6.0)(_bn(layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h)))
        s = layers.GlobalAveragePooling2D(keepdims=True)(h)
        s = layers.Conv2D(cexp // 4, 1, activation="relu")(s)
        s = layers.Conv2D(cexp, 1, activation="hard_sigmoid")(s)
        h = layers.Multiply()([h, s])
        h = _bn(layers.Conv2D(16, 1, use_bias=False)(h))
        x = layers.Add()([x, h])
    x = layers.ReLU(6.0)(_bn(layers.Conv2D(128, 1, use_bias=False)(x)))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(layers.Dense(64, activation="swish")(x)))


def branchy_cnn() -> keras.Model:
    """Two branches (swish / tanh-approximated gelu) concatenated, max-pool, flatten, dense tanh, dense."""
    inp = keras.Input((16, 16, 3), name="input")
    a = layers.Conv2D(12, 3, padding="same", activation="swish")(inp)
    b = layers.Conv2D(8, 3, padding="same", activation=lambda t: tf.nn.gelu(t, approximate=True))(inp)
    x = layers.Concatenate()([a, b])
    x = layers.MaxPooling2D()(layers.Conv2D(24, 3, padding="same", activation="relu")(x))
    x = layers.Flatten()(x)
    x = layers.Dense(48, activation="tanh")(x)
    return keras.Model(inp, layers.Dense(10)(x))


def encoder() -> keras.Model:
    """A transformer encoder block on ``(N, 16, 32)`` features: ``MultiHeadAttention`` (4 heads of 8) → Add →
    LayerNormalization → Dense 64 (tanh-approximated gelu: tf2onnx has no Erfc) → Dense 32 → Add →
    LayerNormalization → mean over tokens → Dense."""
    inp = keras.Input((16, 32), name="input")
    a = layers.MultiHeadAttention(num_heads=4, key_dim=8)(inp, inp)
    x = layers.LayerNormalization()(layers.Add()([inp, a]))
    h = layers.Dense(32)(layers.Dense(64, activation=lambda t: tf.nn.gelu(t, approximate=True))(x))
    x = layers.LayerNormalization()(layers.Add()([x, h]))
    return keras.Model(inp, layers.Dense(10)(layers.GlobalAveragePooling1D()(x)))


def _randomise(model: keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, g.shape).astype(np.float32),
                    rng.normal(0, 0.1, b.shape).astype(np.float32),
                    rng.normal(0, 0.1, m.shape).astype(np.float32),
                    rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                ]
            )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    for name, build in (
        ("keras_mobilenet_like", mobilenet_like),
        ("keras_branchy_cnn", branchy_cnn),
        ("keras_encoder", encoder),
    ):
        model = build()
        _randomise(model, rng)
        spec = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input")]
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=str(out / f"{name}.tf2onnx.onnx"))
        print(out / f"{name}.tf2onnx.onnx")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
