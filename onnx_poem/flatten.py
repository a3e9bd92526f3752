"""Channel-last flattens read channel-first: ``Transpose → flatten → dense`` becomes ``flatten → dense``.

TensorFlow models are channel-last: tf2onnx writes Keras' ``Flatten`` of an NCHW conv
output as ``Transpose(perm=[0, 2, 3, 1]) → Reshape(N, H·W·C) → MatMul``, so the dense
layer's input index is ``(h·W + w)·C + c``: every channel's columns are spread ``C``
apart, and the channel analysis stops at the ``Reshape``.  The same product is

    y = flat(transpose(x, p)) · W = flat(x) · W',   W'[σ(j)] = W[j],
    σ = arange(Π dims(x)).reshape(dims(x)).transpose(p).reshape(-1),

(``dims`` without the batch axis, ``p`` the permutation of those axes), so
:func:`flatten_channels_first` flattens ``x`` itself and permutes the dense weight's
rows (a ``Gemm`` with ``transB`` its columns); a channel's columns are then
contiguous (``c·H·W + h·W + w``), as for PyTorch's ``Flatten``, and are pruned
through.  The ``Transpose`` stays where something else reads its output.

Only where the rewrite is exact and local: a ``Transpose`` that keeps the batch axis
first, on a tensor of static non-batch dimensions, flattened to ``(N, ·)`` by a
``Flatten(axis=1)`` or a ``Reshape`` to a constant ``[-1 | 0 | N, -1 | Π dims]``, read
only by one ``MatMul`` (right operand constant) or ``Gemm`` (no ``transA``) whose
weight nothing else reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import infer_shapes, working_copy
from .nodeindex import NodeIndex, int_attr, ints_attr

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Site:
    """One ``Transpose`` (node ``transpose``) → flatten (node ``flatten``) → dense (node ``dense``)."""

    transpose: int
    flatten: int
    dense: int
    weight: str
    perm: tuple[int, ...]


def _sites(model: onnx.ModelProto) -> list[_Site]:
    """Candidate sites, before the shape check."""
    g = model.graph
    ix = NodeIndex(g)
    inits, producer, readers, outputs = ix.inits, ix.producer, ix.readers, ix.outputs
    sites = []
    for i, n in enumerate(g.node):
        if n.op_type not in ("Reshape", "Flatten") or n.domain not in ("", "ai.onnx") or not n.input:
            continue
        t = producer.get(n.input[0])
        if t is None or g.node[t].op_type != "Transpose":
            continue
        perm = ints_attr(g.node[t], "perm") or ()
        if len(perm) < 3 or perm[0] != 0 or perm == tuple(range(len(perm))):
            continue
        if n.op_type == "Flatten" and int_attr(n, "axis", 1) != 1:
            continue
        if n.op_type == "Reshape" and (len(n.input) < 2 or n.input[1] not in inits or int_attr(n, "allowzero")):
            continue
        users = readers.get(n.output[0], [])
        if n.output[0] in outputs or len(users) != 1:
            continue
        d = g.node[users[0]]
        matmul = d.op_type == "MatMul" and len(d.input) == 2 and d.input[0] == n.output[0]
        gemm = d.op_type == "Gemm" and d.input[0] == n.output[0] and not int_attr(d, "transA")
        if not (matmul or gemm):
            continue
        w = d.input[1]
        if w not in inits or len(readers.get(w, [])) != 1 or w in outputs:
            continue
        sites.append(_Site(t, i, users[0], w, perm))
    return sites


def _flat_size(dims: tuple[int | None, ...] | None) -> int | None:
    if not dims or any(d is None or d <= 0 for d in dims[1:]):
        return None
    return int(np.prod([d or 0 for d in dims[1:]]))


def _checked(model: onnx.ModelProto, sites: list[_Site]) -> list[tuple[_Site, tuple[int, ...]]]:
    """The sites whose transposed tensor has static non-batch dimensions and whose flatten keeps the batch
    axis, with those dimensions (of the ``Transpose`` input)."""
    g = model.graph
    shapes = infer_shapes(model, {})[0]
    inits = {t.name: t for t in g.initializer}
    out = []
    for s in sites:
        dims = shapes.get(g.node[s.transpose].input[0])
        size = _flat_size(dims)
        if size is None or dims is None:
            continue
        f = g.node[s.flatten]
        if f.op_type == "Reshape":
            shape = [int(v) for v in numpy_helper.to_array(inits[f.input[1]]).reshape(-1)]
            if len(shape) != 2 or shape[1] not in (-1, size) or (shape[0] not in (-1, 0) and shape[0] != dims[0]):
                continue
        w = inits[s.weight]
        d = g.node[s.dense]
        rows = int(w.dims[1]) if d.op_type == "Gemm" and int_attr(d, "transB") else int(w.dims[0])
        if len(w.dims) != 2 or rows != size:
            continue
        out.append((s, tuple(int(v) for v in dims[1:])))  # type: ignore[arg-type]
    return out


def flatten_channels_first(model: onnx.ModelProto, *, inplace: bool = False) -> onnx.ModelProto:
    """``model`` with every channel-last flatten before a dense layer read channel-first (module docstring).

    Returns ``model`` itself when there is none; otherwise a copy (the input is not modified), or with
    ``inplace`` (the caller's own copy) ``model`` changed in place.
    """
    sites = _sites(model)
    if not sites:
        return model
    found = _checked(model, sites)
    if not found:
        return model
    m = working_copy(model, inplace)
    g = m.graph
    at = {t.name: i for i, t in enumerate(g.initializer)}
    dropped = []
    for s, dims in found:
        t, f, d = g.node[s.transpose], g.node[s.flatten], g.node[s.dense]
        sigma = np.arange(int(np.prod(dims))).reshape(dims).transpose([p - 1 for p in s.perm[1:]]).reshape(-1)
        w = numpy_helper.to_array(g.initializer[at[s.weight]])
        along_cols = d.op_type == "Gemm" and bool(int_attr(d, "transB"))
        permuted = np.empty_like(w)
        if along_cols:
            permuted[:, sigma] = w
        else:
            permuted[sigma] = w
        g.initializer[at[s.weight]].CopyFrom(numpy_helper.from_array(permuted, s.weight))
        f.input[0] = t.input[0]
        if not any(t.output[0] in n.input for n in g.node) and t.output[0] not in {o.name for o in g.output}:
            dropped.append(s.transpose)
    for i in sorted(dropped, reverse=True):
        del g.node[i]
    logger.info("read %d channel-last flattens channel-first (dense weights' rows permuted)", len(found))
    return m
