"""Fused projections split into one layer per part (PyTorch's ``nn.MultiheadAttention`` ``in_proj``).

``nn.MultiheadAttention`` computes q, k and v with one weight ``(E, 3E)`` and separates them after the
product; torch's dynamo exporter writes::

    p = x·W + b (…, 3E) → Reshape (…, 3, E) → Unsqueeze / Transpose / Squeeze → Gather(i) on the "3" axis

so the heads' analysis meets a ``Gather`` and stops.  Part ``i`` is exactly ``x·W[:, iE:(i+1)E] + b[iE:(i+1)E]``
when the axis moves only bring the "3" axis forward and leave the others in order, so
:func:`split_fused_projections` writes each ``Gather``'s output with its own ``MatMul`` (and ``Add``), and q,
k and v are three ordinary producers.  The axis moves are followed label by label (each axis of the
reshaped tensor is a leading axis, the part axis, the feature axis or an inserted axis of size 1); only a
chain that ends, at every ``Gather``, in exactly the leading axes and the feature axis is rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import Shape, infer_shapes, working_copy
from .nodeindex import NodeIndex, int_attr, ints_attr

logger = logging.getLogger(__name__)

PART, FEATURE, ONE = "part", "feature", "one"


def _ints(n: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[int] | None:
    """Axes of an Unsqueeze/Squeeze (attribute, or constant second input), or a Transpose's perm."""
    found = ints_attr(n, "perm" if n.op_type == "Transpose" else "axes")
    if found is not None:
        return list(found)
    if n.op_type != "Transpose" and len(n.input) > 1 and n.input[1] in inits:
        return [int(v) for v in numpy_helper.to_array(inits[n.input[1]]).reshape(-1)]
    return None


def _move(n: onnx.NodeProto, labels: list[object], inits: dict[str, onnx.TensorProto]) -> list[object] | None:
    """The labels of ``n``'s output given its input's (``None``: not an axis move this module follows)."""
    ints = _ints(n, inits)
    if n.op_type == "Transpose":
        perm = ints if ints is not None else list(range(len(labels)))[::-1]
        return [labels[p] for p in perm] if sorted(perm) == list(range(len(labels))) else None
    if ints is None:
        return None
    if n.op_type == "Unsqueeze":
        rank = len(labels) + len(ints)
        at = sorted(a % rank for a in ints)
        out: list[object] = list(labels)
        for a in at:
            out.insert(a, ONE)
        return out
    if n.op_type == "Squeeze":
        gone = {a % len(labels) for a in ints}
        if any(labels[a] != ONE for a in gone):
            return None
        return [lab for a, lab in enumerate(labels) if a not in gone]
    return None


def _chain(ix: NodeIndex, tensor: str) -> tuple[list[int], list[int]] | None:
    """From ``tensor``, the single-reader ``Unsqueeze``/``Squeeze``/``Transpose`` nodes up to a tensor that only
    ``Gather`` nodes read, and those ``Gather`` nodes (``None``: the path is anything else)."""
    chain: list[int] = []
    while True:
        users = ix.readers.get(tensor, [])
        if users and tensor not in ix.outputs and all(ix.g.node[u].op_type == "Gather" for u in users):
            return chain, users
        if len(users) != 1 or ix.g.node[users[0]].op_type not in ("Unsqueeze", "Squeeze", "Transpose"):
            return None
        chain.append(users[0])
        tensor = ix.g.node[users[0]].output[0]


def _site(
    ix: NodeIndex, i: int, shapes_of: Callable[[], dict[str, Shape]]
) -> tuple[int | None, int, int, list[tuple[int, int]], list[int]] | None:
    """For MatMul ``i``: ``(bias Add, parts K, part size E, [(Gather node, part index)], chain nodes)``.  The node
    pattern is matched first; ``shapes_of()`` (shape inference) is called only for a MatMul that matches it."""
    g, inits = ix.g, ix.inits
    n = g.node[i]
    if len(n.input) != 2 or n.input[1] not in inits or n.input[0] in inits:
        return None
    w = inits[n.input[1]]
    if len(w.dims) != 2:
        return None
    out, add = n.output[0], None
    a_idx = ix.only_reader(out)
    if a_idx is not None and g.node[a_idx].op_type == "Add":
        a = g.node[a_idx]
        other = a.input[1] if a.input[0] == out else a.input[0]
        if other in inits and [int(d) for d in inits[other].dims] == [int(w.dims[1])]:
            add, out = a_idx, a.output[0]
    r = ix.only_reader(out)
    if r is None or g.node[r].op_type != "Reshape":
        return None
    reshape = g.node[r]
    found = _chain(ix, reshape.output[0])
    if found is None:
        return None
    moves, gather_nodes = found
    shapes = shapes_of()
    a_shape, b_shape = shapes.get(out), shapes.get(reshape.output[0])
    if not a_shape or not b_shape or len(b_shape) != len(a_shape) + 1 or b_shape[-2] is None or b_shape[-1] is None:
        return None
    parts, size = int(b_shape[-2]), int(b_shape[-1])
    if (
        parts < 2
        or parts * size != int(w.dims[1])
        or any(x is not None and y is not None and x != y for x, y in zip(a_shape[:-1], b_shape[:-2], strict=True))
    ):
        return None
    lead = list(range(len(a_shape) - 1))
    labels: list[object] | None = [*lead, PART, FEATURE]
    for k in moves:
        labels = _move(g.node[k], labels, inits) if labels is not None else None
    if labels is None:
        return None
    gathers = []
    for u in gather_nodes:
        gn = g.node[u]
        axis = int_attr(gn, "axis", 0) % len(labels)
        idx = numpy_helper.to_array(inits[gn.input[1]]) if gn.input[1] in inits else None
        if labels[axis] != PART or idx is None or idx.ndim != 0 or not 0 <= int(idx) < parts:
            return None
        if [lab for k, lab in enumerate(labels) if k != axis] != [*lead, FEATURE]:
            return None
        gathers.append((u, int(idx)))
    return add, parts, size, gathers, [r, *moves]


def split_fused_projections(model: onnx.ModelProto, *, inplace: bool = False) -> onnx.ModelProto:
    """``model`` with every fused projection of the module docstring split into one layer per part.

    Returns ``model`` itself when there is none; otherwise a copy (the input is not modified), or with
    ``inplace`` (the caller's own copy) ``model`` changed in place.
    """
    g = model.graph
    if not any(n.op_type == "Gather" for n in g.node):
        return model
    ix = NodeIndex(g)
    inferred: list[dict[str, Shape]] = []

    def shapes_of() -> dict[str, Shape]:
        if not inferred:
            inferred.append(infer_shapes(model, {})[0])
        return inferred[0]

    sites = []
    for k, n in enumerate(g.node):
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx"):
            continue
        found = _site(ix, k, shapes_of)
        if found is not None and not any(g.node[c].output[0] in ix.outputs for c in found[4]):
            sites.append((k, found))
    if not sites:
        return model
    m = working_copy(model, inplace)
    g = m.graph
    dead: set[int] = set()
    replaced: dict[int, list[onnx.NodeProto]] = {}  # Gather node → the layer that now writes its output
    for k, (add, _, size, gathers, chain) in sites:
        mm = g.node[k]
        w = numpy_helper.to_array(ix.inits[mm.input[1]])
        b = None
        if add is not None:
            a = g.node[add]
            b = numpy_helper.to_array(ix.inits[a.input[1] if a.input[0] == mm.output[0] else a.input[0]])
        for gi, part in gathers:
            out = g.node[gi].output[0]
            base = f"{mm.input[1]}__part{part}"
            cols = slice(part * size, (part + 1) * size)
            g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, cols]), base))
            nodes = [helper.make_node("MatMul", [mm.input[0], base], [out if b is None else f"{base}__mm"], name=base)]
            if b is not None:
                g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b[cols]), f"{base}__bias"))
                nodes.append(helper.make_node("Add", [f"{base}__mm", f"{base}__bias"], [out], name=f"{base}__add"))
            replaced[gi] = nodes
        dead.update(chain)
        dead.add(k)
        if add is not None:
            dead.add(add)
    rebuilt: list[onnx.NodeProto] = []
    for k, n in enumerate(g.node):
        if k in replaced:
            rebuilt.extend(replaced[k])
        elif k not in dead:
            rebuilt.append(n)
    copies = [onnx.NodeProto() for _ in rebuilt]
    for c, n in zip(copies, rebuilt, strict=True):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)
    from .fold import drop_unused  # fold.fold_constants calls this module first

    drop_unused(g)
    del g.value_info[:]
    logger.info("split %d fused projections into one layer per part", len(sites))
    return m
