"""Batched MatMuls of merged leading axes run on the unmerged operands (tf2onnx's einsum).

tf2onnx writes each of attention's einsums (``q·kᵀ``, ``p·v``) with the heads merged into the batch
axis, where the channel analysis cannot follow them::

    A0 (N, H, ...) → Reshape [-1, a, b] → (N·H, a, b) ─┐
    B0 (N, H, ...) → Reshape [-1, b', c'] [→ Transpose (0, 2, 1)] ─┴ MatMul (N·H, a, c) → Reshape [-1, H, a, c, 1]

A Reshape reinterprets the same row-major buffer and MatMul batches over every leading axis, so

    reshape(A0, [N·H, a, b]) @ reshape(B0, [N·H, b, c])
        = reshape(reshape(A0, [N, H, a, b]) @ reshape(B0, [N, H, b, c]), [N·H, a, c]):

:func:`unmerge_batched_matmuls` makes each merging shape ``[-1, a, b]`` a ``[0, 0, a, b]`` (the first two
axes copied), gives a Transpose between it and the MatMul the extra axis in its permutation, and leaves
the MatMul's output ``(N, H, a, c)`` to the Reshapes that read it: their constant shapes, without 0
entries, give the same tensor from it as from ``(N·H, a, c)``.  The heads then stay on their own axis
from the split to the merge (:mod:`onnx_poem.coupling.attention`).

Only where that is exact and local: a MatMul of two computed operands, each a Reshape to a constant
``[-1, a, b]`` (optionally followed by a Transpose that keeps axis 0) of a tensor whose second axis is
the same static ``H > 1`` on both sides and whose axes after it are static with product ``a·b``; every
intermediate read by the next node only; the MatMul's output read only by such Reshapes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import Shape, infer_shapes, working_copy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Operand:
    """One merged operand: its Reshape node, the Transpose after it (``None``: none) and the new shape."""

    reshape: int
    transpose: int | None
    shape: tuple[int, ...]


def _attr_ints(n: onnx.NodeProto, name: str) -> tuple[int, ...] | None:
    return next((tuple(int(v) for v in a.ints) for a in n.attribute if a.name == name), None)


def _allowzero(n: onnx.NodeProto) -> bool:
    return any(a.name == "allowzero" and a.i for a in n.attribute)


class _Graph:
    """Producers, readers and constant shapes of a graph, for the pattern checks."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: i for i, n in enumerate(g.node) for o in n.output}
        self.readers: dict[str, list[int]] = {}
        for i, n in enumerate(g.node):
            for t in dict.fromkeys(n.input):
                self.readers.setdefault(t, []).append(i)
        self.outputs = {o.name for o in g.output}

    def only_reader(self, tensor: str) -> int | None:
        r = self.readers.get(tensor, [])
        return r[0] if len(r) == 1 and tensor not in self.outputs else None

    def shape_const(self, n: onnx.NodeProto) -> list[int] | None:
        if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] not in self.inits or _allowzero(n):
            return None
        return [int(v) for v in numpy_helper.to_array(self.inits[n.input[1]]).reshape(-1)]


def _operand(gr: _Graph, shapes: dict[str, Shape], matmul: int, tensor: str) -> tuple[_Operand, int] | None:
    """The merged operand ``tensor`` of ``matmul`` and its head count ``H``, or ``None``."""
    if gr.only_reader(tensor) != matmul:
        return None
    p = gr.producer.get(tensor)
    transpose = None
    if p is not None and gr.g.node[p].op_type == "Transpose":
        perm = _attr_ints(gr.g.node[p], "perm")
        if perm is None or len(perm) != 3 or perm[0] != 0 or gr.only_reader(gr.g.node[p].input[0]) != p:
            return None
        transpose, p = p, gr.producer.get(gr.g.node[p].input[0])
    if p is None:
        return None
    n = gr.g.node[p]
    target = gr.shape_const(n)
    if target is None or len(target) != 3 or target[0] != -1 or min(target[1:]) < 1:
        return None
    dims = shapes.get(n.input[0])
    if dims is None:
        return None
    if len(dims) < 3 or any(d is None for d in dims[1:]) or int(np.prod(dims[2:])) != target[1] * target[2]:  # type: ignore[arg-type]
        return None
    heads = int(dims[1])  # type: ignore[arg-type]
    return _Operand(p, transpose, (0, 0, target[1], target[2])), heads


def _sites(model: onnx.ModelProto) -> list[tuple[int, _Operand, _Operand]]:
    gr = _Graph(model)
    if not any(n.op_type == "MatMul" for n in gr.g.node):
        return []
    shapes = infer_shapes(model, {})[0]
    sites = []
    for i, n in enumerate(gr.g.node):
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx") or any(t in gr.inits for t in n.input[:2]):
            continue
        found = [_operand(gr, shapes, i, t) for t in n.input[:2]]
        if found[0] is None or found[1] is None or found[0][1] != found[1][1] or found[0][1] < 2:
            continue
        readers = gr.readers.get(n.output[0], [])
        if n.output[0] in gr.outputs or not readers:
            continue
        targets = [(gr.shape_const(gr.g.node[r]), gr.g.node[r].input[0]) for r in readers]
        if any(t is None or 0 in t or data != n.output[0] for t, data in targets):
            continue
        sites.append((i, found[0][0], found[1][0]))
    return sites


def unmerge_batched_matmuls(model: onnx.ModelProto, *, inplace: bool = False) -> onnx.ModelProto:
    """``model`` with every merged batched MatMul of the module docstring run on unmerged operands.

    Returns ``model`` itself when there is none; otherwise a copy (the input is not modified), or with
    ``inplace`` (the caller's own copy) ``model`` changed in place.
    """
    sites = _sites(model)
    if not sites:
        return model
    m = working_copy(model, inplace)
    g = m.graph
    names = {t.name for t in g.initializer}
    for _, *operands in sites:
        for op in operands:
            n = g.node[op.reshape]
            name = f"{n.input[1]}__unmerged"
            while name in names:
                name += "_"
            names.add(name)
            g.initializer.append(numpy_helper.from_array(np.array(op.shape, dtype=np.int64), name))
            n.input[1] = name
            if op.transpose is not None:
                t = g.node[op.transpose]
                perm = _attr_ints(t, "perm")
                assert perm is not None  # checked in _operand
                del t.attribute[:]
                t.attribute.append(helper.make_attribute("perm", [0, 1, *(p + 1 for p in perm[1:])]))
    from .fold import drop_unused  # fold.fold_constants calls this module first

    drop_unused(g)  # the merging shapes no Reshape reads any more
    del g.value_info[:]
    logger.info("ran %d batched MatMuls of merged leading axes on the unmerged operands", len(sites))
    return m
