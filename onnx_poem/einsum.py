"""Dense layers written as ``Einsum`` (Keras' ``EinsumDense`` by tf2onnx) become ``Reshape → MatMul → Reshape``.

Keras' ``MultiHeadAttention`` projects with ``EinsumDense``; some tf2onnx versions keep those as ONNX
``Einsum`` nodes, e.g. the output projection ``abcd,cde->abe`` (heads ``c`` of size ``d`` into features
``e``).  An equation ``P C, C E -> P E`` (the computed operand's trailing indices ``C`` contracted with the
constant's leading ones in the same order, the constant's other indices ``E`` new, the computed operand's
``P`` kept in front) is the same product as

    reshape(x, [*P, ΠC]) · reshape(W, [ΠC, ΠE]) → reshape to [*P, *E]

(row-major reshapes keep the contracted and the new indices in order), which the channel analysis knows:
the first ``Reshape`` merges the heads back into the features, the ``MatMul`` is an ordinary consumer or
producer.  The ``Reshape`` shapes copy the ``P`` dimensions (entries 0), so every batch and sequence size
runs.  Only ``Einsum`` nodes of that form whose constant (an initializer) nothing else reads are changed.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import working_copy
from .nodeindex import NodeIndex

logger = logging.getLogger(__name__)


def _form(equation: str, w_rank: int) -> tuple[int, int] | None:
    """``(len(P), len(C))`` when ``equation`` (computed operand first) is ``P C, C E -> P E``, else ``None``."""
    eq = equation.replace(" ", "")
    if "..." in eq or "->" not in eq:
        return None
    left, out = eq.split("->")
    terms = left.split(",")
    if len(terms) != 2:
        return None
    x, w = terms
    if len(w) != w_rank:
        return None
    shared = [c for c in x if c in w]
    k = len(shared)
    if k == 0 or x[len(x) - k :] != w[:k] or "".join(shared) != w[:k]:
        return None
    p, e = x[: len(x) - k], w[k:]
    if out != p + e or len(set(x)) != len(x) or len(set(w)) != len(w) or not e:
        return None
    return len(p), k


def dense_einsums_as_matmuls(model: onnx.ModelProto, *, inplace: bool = False) -> onnx.ModelProto:
    """``model`` with every dense ``Einsum`` written as ``Reshape → MatMul → Reshape`` (module docstring).

    Returns ``model`` itself when there is none; otherwise a copy (the input is not modified), or with
    ``inplace`` (the caller's own copy) ``model`` changed in place.
    """
    g = model.graph
    if not any(n.op_type == "Einsum" for n in g.node):
        return model
    ix = NodeIndex(g)
    sites = []
    for i, n in enumerate(g.node):
        if n.op_type != "Einsum" or n.domain not in ("", "ai.onnx") or len(n.input) != 2:
            continue
        w = ix.inits.get(n.input[1])
        eq = next((a.s.decode() for a in n.attribute if a.name == "equation"), "")
        form = None if w is None or ix.only_reader(w.name) != i or n.input[0] in ix.inits else _form(eq, len(w.dims))
        if form is not None:
            sites.append((i, form))
    if not sites:
        return model
    m = working_copy(model, inplace)
    g = m.graph
    at = {t.name: k for k, t in enumerate(g.initializer)}
    for i, (p, k) in reversed(sites):
        n = g.node[i]
        t = g.initializer[at[n.input[1]]]
        dims = [int(d) for d in t.dims]
        inner, new = int(np.prod(dims[:k])), dims[k:]
        w = numpy_helper.to_array(t).reshape(inner, int(np.prod(new)))
        t.CopyFrom(numpy_helper.from_array(w, t.name))
        base = n.name or n.output[0]
        x_shape = numpy_helper.from_array(np.array([0] * p + [inner], np.int64), f"{base}__flat_shape")
        nodes = [
            helper.make_node("Reshape", [n.input[0], x_shape.name], [f"{base}__flat"], name=f"{base}__flat"),
            helper.make_node("MatMul", [f"{base}__flat", t.name], [f"{base}__mm"], name=f"{base}__mm"),
        ]
        g.initializer.append(x_shape)
        if len(new) > 1:
            o_shape = numpy_helper.from_array(np.array([0] * p + new, np.int64), f"{base}__out_shape")
            g.initializer.append(o_shape)
            nodes.append(helper.make_node("Reshape", [f"{base}__mm", o_shape.name], [n.output[0]], name=base))
        else:
            nodes[-1].output[0] = n.output[0]
        del g.node[i]
        for j, node in enumerate(nodes):
            g.node.insert(i + j, node)
    del g.value_info[:]
    logger.info("wrote %d dense Einsum nodes as MatMuls", len(sites))
    return m
