"""The op kinds, one module each (see :mod:`onnx_poem.coupling.flow`): importing this package registers them.

================  ===========================================================================
module            op kinds
================  ===========================================================================
activations       elementwise ops on one tensor; the activation registry; Clip, PRelu
arithmetic        Add/Sub/Mul/Div/Max/Min (joins of two computed tensors, per-channel constants), Pow
normalization     BatchNormalization, InstanceNormalization
layout            Transpose, Squeeze, Unsqueeze
spatial           pooling, Resize/Upsample, reductions over other axes
reshape           Reshape and Flatten of channels (flattens, token merges, unit axes)
layers            Conv, ConvTranspose, Gemm, MatMul (producers and consumers), grouped convs, quantized layers
pad               channel Pad (option-A shortcuts)
concat            Concat
split             Split, Slice
shuffle           channel shuffles
attention         attention heads: head reshapes, scores MatMuls, Softmax, Shape, grouped-query repeats
================  ===========================================================================
"""

from . import (  # noqa: F401
    activations,
    arithmetic,
    attention,
    concat,
    layers,
    layout,
    normalization,
    pad,
    reshape,
    shuffle,
    spatial,
    split,
)
