"""Fold exporters' shape arithmetic into constants where it does not depend on the input sizes.

PyTorch's TorchScript exporter with a dynamic batch axis computes every
``view``/``reshape``/``chunk`` argument at run time: ``Shape → Gather → Div →
Unsqueeze → Concat → Reshape``, ``Slice`` bounds from ``Shape``.  Shape inference
then loses the channel counts and the analysis stops at the first such node
(ShuffleNetV2's channel shuffle and ``chunk``, every HF ``view`` into heads,
the rotary embedding's ``rotate_half``).

:func:`fold_shapes` evaluates the integer tensors that such subgraphs hand to
other nodes (the *sinks*), with onnxruntime, on zero inputs at batch sizes 1, 2
and 3, and, where an input has other dynamic dimensions (a sequence length, an
image size), at the values :data:`SIZES` of those too (all such dimensions of one
name together; the sizes are varied at batch 1).  A sink whose value is the same
in every run becomes an initializer (one copy per reading node, so each can be
rewritten on its own).  A ``Reshape`` shape whose first entry is the batch size (or a
fixed multiple of it) and whose other entries are the same in every run becomes
``[-1, s1, ...]``: the same reshape for every batch size.  A value that changes with a sequence length (a
causal mask's size, a ``(N, T, H·d)`` reshape) stays computed.  The remaining shape
nodes that nothing reads any more are removed.

[R] A value equal in every run could still depend on a size at values not tried: a
clamp (``Min(T, 2)``), or a size divided by a stride (PP-OCRv4's recogniser, its width
dynamic: ``W / 8`` is 1 at widths 3, 5 and 7, and was folded so until the run at 64 was
added; its pruned model then failed at the real width).  The sizes are small and distinct
so that clamps show, and 64 so that strides up to 32 do; inputs of rank 4 or more with a
dynamic dimension other than the batch (images of any size) are not folded at all, as
before these sizes were tried.  A model that cannot run at those sizes (a positional
table shorter than 64) is not folded either.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import session, subgraph_reads

logger = logging.getLogger(__name__)

#: integer ops that shape arithmetic is made of (their outputs join the shape subgraph when all inputs do)
SHAPE_OPS = (
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Slice",
    "Cast",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Floor",
    "Ceil",
    "Identity",
    "Reshape",
    "Max",
    "Min",
    "Equal",
    "Where",
    "ReduceProd",
    "Neg",
    "Abs",
    "Mod",
)

BATCHES = (1, 2, 3)
#: values tried for every dynamic dimension other than the batch (see the module docstring)
SIZES = (3, 5, 7, 64)


def fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with size-independent shape arithmetic folded (see the module docstring).

    Returns ``model`` itself when there is nothing to fold, or when the model cannot be
    evaluated at the sizes tried.
    """
    g = model.graph
    found = _input_shapes(model)
    if found is None:
        return model
    shapes, runs_at = found
    shape_set, sinks = _shape_subgraph(g)
    if not sinks:
        return model
    data = {g.node[i].input[0] for i, slot, _ in sinks if g.node[i].op_type == "Reshape" and slot == 1}
    pieces = _pieces(g, shape_set)
    names = sorted({t for _, _, t in sinks} | {t for _, _, t in pieces} | data)
    try:
        runs = _evaluate(model, names, shapes, runs_at)
    except Exception as e:  # onnxruntime's errors share no base class: fold nothing
        logger.debug("shape folding skipped: %s", e)
        return model
    batches = [b for b, _ in runs_at]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    folded = 0
    for node_idx, slot, tensor in sinks:
        vals = [r[tensor] for r in runs]
        node = g.node[node_idx]
        data_shapes = [r[node.input[0]].shape for r in runs] if node.op_type == "Reshape" else []
        value = _batch_free(node, slot, vals, batches, data_shapes)
        if value is None:
            continue
        name = f"{tensor}__poem_{node_idx}_{slot}"
        g.initializer.append(numpy_helper.from_array(value, name))
        node.input[slot] = name
        folded += 1
    for node_idx, slot, tensor in pieces:  # a size-independent piece of a value that is not: the piece
        vals = [r[tensor] for r in runs]
        node = g.node[node_idx]
        if not _same(vals):
            continue
        if all(_same([r[o] for r in runs]) for o in node.output if o in runs[0]):
            continue  # the node's own value is constant: folded where it is read, if it is a sink
        name = f"{tensor}__poem_{node_idx}_{slot}"
        g.initializer.append(numpy_helper.from_array(vals[0], name))
        node.input[slot] = name
        folded += 1
    if not folded:
        return model
    _drop_dead(g, shape_set)
    del g.value_info[:]
    logger.info("folded %d shape computations into constants", folded)
    return m


#: an input's dims after the batch axis: a size, or the name of a dynamic dimension
Dims = list[int | str]
#: one evaluation: the batch size and the value of every named dynamic dimension
Run = tuple[int, dict[str, int]]


def _input_shapes(model: onnx.ModelProto) -> tuple[dict[str, tuple[Dims, int]], list[Run]] | None:
    """Per graph input its dims after the batch axis (dynamic ones by name: its ``dim_param``, or one name per
    unnamed axis) and its element type, and the runs to evaluate: :data:`BATCHES` (or the one fixed batch
    size) with every dynamic dimension at ``SIZES[0]``, then each other value of :data:`SIZES` at the first
    batch size.  ``None`` for an input of unknown rank or several fixed batch sizes."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, tuple[Dims, int]] = {}
    fixed: set[int] = set()
    symbols: set[str] = set()
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape") or not tt.shape.dim:
            return None
        dims: Dims = []
        for axis, d in enumerate(tt.shape.dim[1:], start=1):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or f"{vi.name}:{axis}")
                symbols.add(str(dims[-1]))
        if len(tt.shape.dim) >= 4 and any(isinstance(d, str) for d in dims):
            return None  # an image of any size: strides make sizes coincide (module docstring)
        if tt.shape.dim[0].HasField("dim_value"):
            fixed.add(tt.shape.dim[0].dim_value)
        out[vi.name] = (dims, tt.elem_type)
    if len(fixed) > 1:
        return None
    batches = tuple(fixed) if fixed else BATCHES
    runs: list[Run] = [(b, dict.fromkeys(symbols, SIZES[0])) for b in batches]
    if symbols:
        runs += [(batches[0], dict.fromkeys(symbols, v)) for v in SIZES[1:]]
    return out, runs


def _shape_subgraph(g: onnx.GraphProto) -> tuple[set[int], list[tuple[int, int, str]]]:
    """Nodes of the shape arithmetic (from ``Shape``/``Size`` through :data:`SHAPE_OPS` over constants) and
    the sinks ``(node, input slot, tensor)`` where a node outside reads one of their outputs."""
    consts = {t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    computed: set[str] = set()
    members: set[int] = set()
    for i, n in enumerate(g.node):
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type in ("Shape", "Size"):
            members.add(i)
            computed.update(n.output)
        elif (
            n.op_type in SHAPE_OPS
            and any(t in computed for t in n.input)
            and all(not t or t in computed or t in consts for t in n.input)
        ):
            members.add(i)
            computed.update(n.output)
    outputs = {o.name for o in g.output}
    sinks = [
        (i, slot, t)
        for i, n in enumerate(g.node)
        if i not in members
        for slot, t in enumerate(n.input)
        if t in computed and t not in outputs
    ]
    return members, sinks


def _pieces(g: onnx.GraphProto, members: set[int]) -> list[tuple[int, int, str]]:
    """``(node, input slot, tensor)`` where a shape-subgraph node reads another's output: the pieces a value
    is made of (TorchScript's ``Concat(N, T, Shape(k)[1], d)`` for an ``Expand`` of key/value heads: the
    head count is the same for every size even though the whole is not)."""
    produced = {o for i in members for o in g.node[i].output}
    return [(i, slot, t) for i in sorted(members) for slot, t in enumerate(g.node[i].input) if t in produced]


def _evaluate(
    model: onnx.ModelProto, names: list[str], shapes: dict[str, tuple[Dims, int]], runs_at: list[Run]
) -> list[dict[str, np.ndarray]]:
    """Values of tensors ``names`` on zero inputs, one dict per run of ``runs_at``."""
    sess = session(model, optimize=False, outputs=names)  # no copy of the model
    runs = []
    for batch, sizes in runs_at:
        feed = {
            name: np.zeros(
                [batch, *(sizes[d] if isinstance(d, str) else d for d in dims)],
                dtype=onnx.helper.tensor_dtype_to_np_dtype(dtype),
            )
            for name, (dims, dtype) in shapes.items()
        }
        runs.append(dict(zip(names, (np.asarray(v) for v in sess.run(names, feed)), strict=True)))
    return runs


def _batch_free(
    node: onnx.NodeProto,
    slot: int,
    vals: list[np.ndarray],
    batches: list[int],
    data_shapes: list[tuple[int, ...]],
) -> np.ndarray | None:
    """The constant to read in place of a sink with values ``vals`` in runs at batch sizes ``batches``, or
    ``None``.

    ``data_shapes``: a Reshape's data input's shape in each run.  A Reshape shape ``[c·N, s1, ...]`` (``c``
    a fixed positive integer: tf2onnx's einsum merges the heads into the batch axis, ``[N·H, -1, d]``)
    becomes ``[-1, s1, ...]``: the inferred entry is ``c·N`` again for every batch size, the others being
    fixed.  When some ``s_i`` is already -1 it becomes ``[0, s1, ...]`` (copy the input's first dimension)
    if ``c = 1`` and that dimension is the batch size, else ``s_i`` is replaced by the size it resolves to
    when that is the same in every run.
    """
    if _same(vals):
        return vals[0]
    if node.op_type != "Reshape" or slot != 1 or any(v.ndim != 1 or v.shape != vals[0].shape for v in vals):
        return None
    rest = [v[1:] for v in vals]
    if not all(np.array_equal(r, rest[0]) for r in rest) or (rest[0] == 0).any():
        return None
    if len(set(batches)) < 2:
        return None
    per = {int(v[0]) // b if int(v[0]) % b == 0 else 0 for v, b in zip(vals, batches, strict=True)}
    if len(per) != 1 or per == {0}:
        return None  # the first entry is not (a fixed multiple of) the batch size
    fixed = rest[0]
    if (fixed == -1).any():
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if allowzero:
            return None
        if per == {1} and [tuple(d[:1]) for d in data_shapes] == [(b,) for b in batches]:
            return np.concatenate([[0], fixed]).astype(vals[0].dtype)
        known = int(np.prod(fixed[fixed != -1]))
        resolved = {int(np.prod(d)) // max(int(v[0]) * known, 1) for d, v in zip(data_shapes, vals, strict=True)}
        if len(resolved) != 1 or resolved == {0}:
            return None
        fixed = np.where(fixed == -1, resolved.pop(), fixed)
    return np.concatenate([[-1], fixed]).astype(vals[0].dtype)


def _same(vals: list[np.ndarray]) -> bool:
    """The values of one tensor are the same in every run."""
    return all(v.shape == vals[0].shape and np.array_equal(v, vals[0]) for v in vals)


def _drop_dead(g: onnx.GraphProto, members: set[int]) -> None:
    """Remove shape-subgraph nodes whose outputs nothing reads any more (repeatedly), then the constants
    only they read (:func:`onnx_poem.fold.drop_unused`)."""
    from .fold import drop_unused  # fold.fold_constants calls this module first

    outputs = {o.name for o in g.output} | subgraph_reads(g)
    dead: set[int] = set()
    while True:
        read = {t for i, n in enumerate(g.node) if i not in dead for t in n.input} | outputs
        more = {i for i in members - dead if not any(o in read for o in g.node[i].output)}
        if not more:
            break
        dead |= more
    for i in sorted(dead, reverse=True):  # in place (:func:`onnx_poem.external.remove_where`)
        del g.node[i]
    drop_unused(g)
