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
from the split to the merge (:mod:`onnx_poem.coupling.ops.attention`).

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
from .nodeindex import NodeIndex, int_attr, ints_attr

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Operand:
    """One merged operand: its Reshape node, the Transpose after it (``None``: none) and the new shape."""

    reshape: int
    transpose: int | None
    shape: tuple[int, ...]


def _shape_const(ix: NodeIndex, n: onnx.NodeProto) -> list[int] | None:
    """The constant shape of Reshape ``n`` (``None``: another op, a computed shape, or ``allowzero``)."""
    if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] not in ix.inits or int_attr(n, "allowzero"):
        return None
    return [int(v) for v in numpy_helper.to_array(ix.inits[n.input[1]]).reshape(-1)]


def _merged(ix: NodeIndex, matmul: int, tensor: str) -> _Operand | None:
    """Operand ``tensor`` of ``matmul`` if it is a Reshape to a constant ``[-1, a, b]`` (optionally followed
    by a Transpose that keeps axis 0), each read by the next node only; its shape is checked later
    (:func:`_heads`)."""
    if ix.only_reader(tensor) != matmul:
        return None
    p = ix.producer.get(tensor)
    transpose = None
    if p is not None and ix.g.node[p].op_type == "Transpose":
        perm = ints_attr(ix.g.node[p], "perm")
        if perm is None or len(perm) != 3 or perm[0] != 0 or ix.only_reader(ix.g.node[p].input[0]) != p:
            return None
        transpose, p = p, ix.producer.get(ix.g.node[p].input[0])
    if p is None:
        return None
    target = _shape_const(ix, ix.g.node[p])
    if target is None or len(target) != 3 or target[0] != -1 or min(target[1:]) < 1:
        return None
    return _Operand(p, transpose, (0, 0, target[1], target[2]))


def _heads(ix: NodeIndex, shapes: dict[str, Shape], op: _Operand) -> int | None:
    """The second axis ``H`` of the tensor ``op`` merges, if its axes after ``H`` hold ``a·b`` elements."""
    dims = shapes.get(ix.g.node[op.reshape].input[0])
    if dims is None or len(dims) < 3 or any(d is None for d in dims[1:]):
        return None
    if int(np.prod(dims[2:])) != op.shape[2] * op.shape[3]:  # type: ignore[arg-type]
        return None
    return int(dims[1])  # type: ignore[arg-type]


def _sites(model: onnx.ModelProto) -> list[tuple[int, _Operand, _Operand]]:
    """The MatMuls to unmerge, with their operands.  The pattern is matched on the nodes first; shapes are
    inferred only when some MatMul matches (most models have none)."""
    ix = NodeIndex(model.graph)
    candidates = []
    for i, n in enumerate(ix.g.node):
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx") or any(t in ix.inits for t in n.input[:2]):
            continue
        a, b = (_merged(ix, i, t) for t in n.input[:2])
        readers = ix.readers.get(n.output[0], [])
        if a is None or b is None or n.output[0] in ix.outputs or not readers:
            continue
        targets = [(_shape_const(ix, ix.g.node[r]), ix.g.node[r].input[0]) for r in readers]
        if any(t is None or 0 in t or data != n.output[0] for t, data in targets):
            continue
        candidates.append((i, a, b))
    if not candidates:
        return []
    shapes = infer_shapes(model, {})[0]
    sites = []
    for i, a, b in candidates:
        h = _heads(ix, shapes, a)
        if h is not None and h >= 2 and h == _heads(ix, shapes, b):
            sites.append((i, a, b))
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
                perm = ints_attr(t, "perm")
                assert perm is not None  # checked in _operand
                del t.attribute[:]
                t.attribute.append(helper.make_attribute("perm", [0, 1, *(p + 1 for p in perm[1:])]))
    from .fold import drop_unused  # fold.fold_constants calls this module first

    drop_unused(g)  # the merging shapes no Reshape reads any more
    del g.value_info[:]
    logger.info("ran %d batched MatMuls of merged leading axes on the unmerged operands", len(sites))
    return m
