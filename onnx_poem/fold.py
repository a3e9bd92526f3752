"""Normalise exporters' constant plumbing before the analysis.

Exporters write constants in forms the channel analysis cannot read as weights:

* constant-only chains: PaddlePaddle writes a per-channel bias as
  ``Reshape(constant, [1, C, 1, 1]) → Add``; PyTorch's exporter de-duplicates equal
  constants and reads the copy through ``Identity``; others ``Cast`` or
  ``Unsqueeze`` a stored constant.  :func:`fold_constants` evaluates every node of
  :data:`FOLDABLE` whose inputs are all constants (initializers or ``Constant``
  nodes) and stores its output as an initializer of the same name, repeatedly,
  so a chain folds completely.
* shared per-channel constants: one stored bias (or norm scale) read by two layers
  would have to be sliced two ways.  Every floating-point initializer with one axis
  longer than 1 (a vector, or ``[1, C, 1, 1]``) that several nodes read gets its own
  copy per reader (the first keeps the name), so each copy can be sliced for its
  own group.
* shared shapes: a head count is rewritten where it is stored, so a ``Reshape`` or
  ``Expand`` shape must be its own.  A shape ``Concat`` read by several of them (dynamo
  computes grouped-query attention's ``Expand`` shape once for every layer) is
  repeated per reader, and an integer constant such a shape is made of, or a shape
  constant itself, gets a copy per reader.
* channel-last flattens: ``Transpose → Reshape(N, ·) → MatMul`` (tf2onnx's Keras
  ``Flatten``) reads the channels ``C`` apart; it becomes a channel-first flatten with
  the dense weight's rows permuted (:mod:`onnx_poem.flatten`).
* dense layers written as ``Einsum`` (Keras' ``EinsumDense``) become ``Reshape → MatMul``
  (:mod:`onnx_poem.einsum`);
* fused projections (``nn.MultiheadAttention``'s ``in_proj``: one ``MatMul`` for q, k and v, parted by
  ``Gather``) become one layer per part (:mod:`onnx_poem.fused`);
* batched MatMuls of merged leading axes: tf2onnx's einsum merges attention's heads into the
  batch axis around each ``MatMul``; they run on the unmerged operands
  (:mod:`onnx_poem.unmerge`).

The folded model computes the same outputs (the ops are evaluated exactly, by
``onnx.reference``); an input without such constants is returned as it is.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from .einsum import dense_einsums_as_matmuls
from .external import remove_where
from .flatten import flatten_channels_first
from .fused import split_fused_projections
from .graph import subgraph_reads
from .shapefold import fold_shapes
from .unmerge import unmerge_batched_matmuls

logger = logging.getLogger(__name__)

#: ops evaluated when all their inputs are constants
FOLDABLE = ("Identity", "Reshape", "Unsqueeze", "Squeeze", "Cast", "Transpose", "Flatten", "Expand")


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with constant-only :data:`FOLDABLE` nodes folded and shared per-channel constants copied.

    Returns ``model`` itself (not a copy) when there is nothing to change.  Shape arithmetic
    that does not depend on the batch size is folded first (:func:`onnx_poem.shapefold.fold_shapes`),
    then channel-last flattens are read channel-first (:func:`onnx_poem.flatten.flatten_channels_first`),
    dense ``Einsum`` nodes become MatMuls (:func:`onnx_poem.einsum.dense_einsums_as_matmuls`), fused projections
    are split (:func:`onnx_poem.fused.split_fused_projections`) and merged batched MatMuls unmerged
    (:func:`onnx_poem.unmerge.unmerge_batched_matmuls`).
    """
    shaped = fold_shapes(model)
    flat = flatten_channels_first(shaped, inplace=shaped is not model)
    flat = dense_einsums_as_matmuls(flat, inplace=flat is not model)
    flat = split_fused_projections(flat, inplace=flat is not model)
    flat = unmerge_batched_matmuls(flat, inplace=flat is not model)
    if not _foldable(flat) and not _shared(flat) and not _shared_concats(flat.graph):
        return flat
    if flat is not model:  # [R, memory] a copy of ours already: changed in place, not copied once more
        m = flat
    else:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    folded = _fold(m)
    copied = _unshare_concats(m.graph) + _unshare(m)
    if folded or copied:
        logger.info("folded %d constant-only nodes, copied %d shared constants", folded, copied)
    return m


def _constants(g: onnx.GraphProto) -> dict[str, np.ndarray | None]:
    """Names of every constant (values loaded lazily: ``None`` until needed)."""
    names: dict[str, np.ndarray | None] = dict.fromkeys(t.name for t in g.initializer)
    for n in g.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            names[n.output[0]] = None
    return names


def _candidates(g: onnx.GraphProto) -> list[int]:
    consts = _constants(g)
    outputs = {o.name for o in g.output}
    return [
        i
        for i, n in enumerate(g.node)
        if n.op_type in FOLDABLE
        and n.domain in ("", "ai.onnx")
        and all(not t or t in consts for t in n.input)
        and n.input
        and not any(o in outputs for o in n.output)
    ]


def _foldable(model: onnx.ModelProto) -> bool:
    return bool(_candidates(model.graph))


def _value(g: onnx.GraphProto, name: str) -> np.ndarray:
    for t in g.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in g.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            return _evaluate(_single(n, [], list(n.output)))[0]
    raise KeyError(name)


def _evaluate(model: onnx.ModelProto) -> list[np.ndarray]:
    """Outputs of a model without inputs, by the ONNX reference implementation."""
    out = ReferenceEvaluator(model).run(None, {})
    return [np.asarray(v) for v in (out.values() if isinstance(out, dict) else out)]


def _single(node: onnx.NodeProto, inits: list[onnx.TensorProto], outputs: list[str]) -> onnx.ModelProto:
    """A model of ``node`` alone, its inputs given as initializers."""
    graph = helper.make_graph(
        [node], "fold", [], [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in outputs], inits
    )
    return helper.make_model(graph)


def _fold(m: onnx.ModelProto) -> int:
    g = m.graph
    opsets = list(m.opset_import)
    count = 0
    while todo := _candidates(g):
        for i in reversed(todo):
            n = g.node[i]
            inits = [numpy_helper.from_array(_value(g, t), t) for t in dict.fromkeys(t for t in n.input if t)]
            single = _single(n, inits, list(n.output))
            del single.opset_import[:]
            single.opset_import.extend(opsets)
            values = _evaluate(single)
            for name, v in zip(n.output, values, strict=True):
                g.initializer.append(numpy_helper.from_array(np.asarray(v), name))
            del g.node[i]
            count += 1
    drop_unused(g)
    folded = {t.name for t in g.initializer}
    remove_where(g.value_info, lambda vi: vi.name in folded)
    return count


def drop_unused(g: onnx.GraphProto) -> None:
    """Remove initializers and ``Constant`` nodes that no node (nor subgraph, nor output) reads any more."""
    read = {t for n in g.node for t in n.input} | {o.name for o in g.output} | subgraph_reads(g)
    declared = {i.name for i in g.input}
    remove_where(g.initializer, lambda t: t.name not in read and t.name not in declared)
    remove_where(g.node, lambda n: n.op_type == "Constant" and not any(o in read for o in n.output))


def _shared(model: onnx.ModelProto) -> dict[str, int]:
    """Constants read by more than one node input → reader count: per-channel float constants (one axis
    longer than 1), and shape constants of Reshapes (tf2onnx shares equal ones; each is rewritten on its own).

    Matrices (tied weights) are not copied: a weight read by several layers stays unpruned.
    """
    g = model.graph
    uses: dict[str, int] = {}
    shapes: set[str] = set()
    for n in g.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
        if n.op_type in ("Reshape", "Expand") and len(n.input) > 1:
            shapes.add(n.input[1])
    producer = {o: n for n in g.node for o in n.output}
    for t in list(shapes):  # the constant pieces of computed shapes
        p = producer.get(t)
        if p is not None and p.op_type == "Concat":
            shapes.update(p.input)
    inputs = {i.name for i in g.input}
    out = {}
    for t in g.initializer:
        dt = helper.tensor_dtype_to_np_dtype(t.data_type)
        vector = sum(d > 1 for d in t.dims) == 1
        per_channel = np.dtype(dt).kind == "f" and vector
        shape = t.name in shapes and np.dtype(dt).kind == "i" and len(t.dims) == 1
        if uses.get(t.name, 0) > 1 and (per_channel or shape) and t.name not in inputs:
            out[t.name] = uses[t.name]
    return out


def _fresh(names: set[str], t: str, k: int) -> str:
    """``t__copy<k>`` with the first ``k`` from the given one that no tensor of ``names`` has (then added)."""
    while f"{t}__copy{k}" in names:
        k += 1
    names.add(f"{t}__copy{k}")
    return f"{t}__copy{k}"


def _shared_concats(g: onnx.GraphProto) -> dict[str, list[int]]:
    """Outputs of ``Concat`` nodes read as the shape of more than one ``Reshape``/``Expand`` → those readers."""
    concats = {n.output[0] for n in g.node if n.op_type == "Concat"}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        if n.op_type in ("Reshape", "Expand") and len(n.input) > 1 and n.input[1] in concats:
            readers.setdefault(n.input[1], []).append(i)
    return {t: r for t, r in readers.items() if len(r) > 1}


def _unshare_concats(g: onnx.GraphProto) -> int:
    """Every reader of a shared shape ``Concat`` gets a copy of it placed right before the reader (the original
    goes): the cascade caches tensors by position, and a shape computed far upstream of its reader would be
    read from a cache made before the reader's group was pruned."""
    shared = _shared_concats(g)
    if not shared:
        return 0
    names = {t for n in g.node for t in (*n.input, *n.output)}
    producer = {n.output[0]: n for n in g.node if n.op_type == "Concat"}
    before: dict[int, onnx.NodeProto] = {}  # reader → its copy
    for t, readers in shared.items():
        for i in readers:
            out = _fresh(names, t, i)
            c = onnx.NodeProto()
            c.CopyFrom(producer[t])
            c.output[0] = out
            c.name = f"{c.name}__{out}" if c.name else ""
            g.node[i].input[1] = out
            before[i] = c
    read = {t for n in g.node for t in n.input} | {o.name for o in g.output} | subgraph_reads(g)
    nodes = []
    for i, n in enumerate(g.node):
        if i in before:
            nodes.append(before[i])
        if n.op_type != "Concat" or n.output[0] not in shared or n.output[0] in read:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return len(before)


def _unshare(m: onnx.ModelProto) -> int:
    g = m.graph
    shared = _shared(m)
    if not shared:
        return 0
    stored = {t.name: t for t in g.initializer}
    names = {t for n in g.node for t in (*n.input, *n.output)} | set(stored)
    seen: dict[str, int] = {}
    count = 0
    for n in g.node:
        for slot, t in enumerate(n.input):
            if t not in shared:
                continue
            seen[t] = seen.get(t, 0) + 1
            if seen[t] == 1:
                continue  # the first reader keeps the original
            copy = _fresh(names, t, seen[t])
            c = onnx.TensorProto()
            c.CopyFrom(stored[t])
            c.name = copy
            g.initializer.append(c)
            n.input[slot] = copy
            count += 1
    return count
