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

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import Shape, infer_shapes, working_copy

logger = logging.getLogger(__name__)

PART, FEATURE, ONE = "part", "feature", "one"


def _ints(n: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[int] | None:
    """Axes of an Unsqueeze/Squeeze (attribute, or constant second input), or a Transpose's perm."""
    name = "perm" if n.op_type == "Transpose" else "axes"
    for a in n.attribute:
        if a.name == name:
            return [int(v) for v in a.ints]
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


def _site(
    g: onnx.GraphProto,
    i: int,
    shapes: dict[str, Shape],
    inits: dict[str, onnx.TensorProto],
    readers: dict[str, list[int]],
) -> tuple[int | None, int, int, list[tuple[int, int]], list[int]] | None:
    """For MatMul ``i``: ``(bias Add, parts K, part size E, [(Gather node, part index)], chain nodes)``."""
    n = g.node[i]
    if len(n.input) != 2 or n.input[1] not in inits or n.input[0] in inits:
        return None
    w = inits[n.input[1]]
    if len(w.dims) != 2:
        return None
    out, add = n.output[0], None
    r = readers.get(out, [])
    if len(r) == 1 and g.node[r[0]].op_type == "Add":
        a = g.node[r[0]]
        other = a.input[1] if a.input[0] == out else a.input[0]
        if other in inits and [int(d) for d in inits[other].dims] == [int(w.dims[1])]:
            add, out = r[0], a.output[0]
            r = readers.get(out, [])
    if len(r) != 1 or g.node[r[0]].op_type != "Reshape":
        return None
    reshape = g.node[r[0]]
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
    labels: list[object] = [*lead, PART, FEATURE]
    chain, tensor = [r[0]], reshape.output[0]
    while True:
        users = readers.get(tensor, [])
        if users and all(g.node[u].op_type == "Gather" for u in users):
            break
        if len(users) != 1 or g.node[users[0]].op_type not in ("Unsqueeze", "Squeeze", "Transpose"):
            return None
        moved = _move(g.node[users[0]], labels, inits)
        if moved is None:
            return None
        labels, tensor = moved, g.node[users[0]].output[0]
        chain.append(users[0])
    gathers = []
    for u in readers[tensor]:
        gn = g.node[u]
        axis = next((int(a.i) for a in gn.attribute if a.name == "axis"), 0) % len(labels)
        idx = numpy_helper.to_array(inits[gn.input[1]]) if gn.input[1] in inits else None
        if labels[axis] != PART or idx is None or idx.ndim != 0 or not 0 <= int(idx) < parts:
            return None
        if [lab for k, lab in enumerate(labels) if k != axis] != [*lead, FEATURE]:
            return None
        gathers.append((u, int(idx)))
    return add, parts, size, gathers, chain


def split_fused_projections(model: onnx.ModelProto, *, inplace: bool = False) -> onnx.ModelProto:
    """``model`` with every fused projection of the module docstring split into one layer per part.

    Returns ``model`` itself when there is none; otherwise a copy (the input is not modified), or with
    ``inplace`` (the caller's own copy) ``model`` changed in place.
    """
    g = model.graph
    if not any(n.op_type == "Gather" for n in g.node):
        return model
    inits = {t.name: t for t in g.initializer}
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(g.node):
        for t in dict.fromkeys(n.input):
            readers.setdefault(t, []).append(k)
    outputs = {o.name for o in g.output}
    candidates = [k for k, n in enumerate(g.node) if n.op_type == "MatMul" and n.domain in ("", "ai.onnx")]
    if not candidates:
        return model
    shapes = infer_shapes(model, {})[0]
    sites = []
    for k in candidates:
        found = _site(g, k, shapes, inits, readers)
        if found is not None and not any(g.node[c].output[0] in outputs for c in found[4]):
            sites.append((k, found))
    if not sites:
        return model
    m = working_copy(model, inplace)
    g = m.graph
    dead: set[int] = set()
    replaced: dict[int, list[onnx.NodeProto]] = {}  # Gather node → the layer that now writes its output
    for k, (add, _, size, gathers, chain) in sites:
        mm = g.node[k]
        w = numpy_helper.to_array(inits[mm.input[1]])
        b = None
        if add is not None:
            a = g.node[add]
            b = numpy_helper.to_array(inits[a.input[1] if a.input[0] == mm.output[0] else a.input[0]])
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
