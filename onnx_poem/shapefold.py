"""Fold exporters' shape arithmetic into constants where it does not depend on the batch size.

PyTorch's TorchScript exporter with a dynamic batch axis computes every
``view``/``reshape``/``chunk`` argument at run time: ``Shape → Gather → Div →
Unsqueeze → Concat → Reshape``, ``Slice`` bounds from ``Shape``.  Shape inference
then loses the channel counts and the analysis stops at the first such node
(ShuffleNetV2's channel shuffle and ``chunk``, every HF ``view`` into heads).

:func:`fold_shapes` evaluates the integer tensors that such subgraphs hand to
other nodes (the *sinks*), with onnxruntime, on zero inputs at batch sizes 1, 2
and 3.  A sink whose value is the same at all three becomes an initializer (one
copy per reading node, so each can be rewritten on its own).  A ``Reshape``
shape whose first entry is the batch size and whose other entries are constant
becomes ``[-1, s1, ...]``: the same reshape for every batch size.  The remaining
shape nodes that nothing reads any more are removed.

Only models whose inputs are static except their first (batch) axis are folded:
a value equal at three batch sizes could still depend on a sequence length or an
image size, which the calibration data cannot vary.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import session

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


def fold_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with batch-independent shape arithmetic folded (see the module docstring).

    Returns ``model`` itself when there is nothing to fold or the model's inputs are not
    static apart from their batch axis.
    """
    g = model.graph
    found = _input_shapes(model)
    if found is None:
        return model
    shapes, batches = found
    shape_set, sinks = _shape_subgraph(g)
    if not sinks:
        return model
    data = {g.node[i].input[0] for i, slot, _ in sinks if g.node[i].op_type == "Reshape" and slot == 1}
    names = sorted({t for _, _, t in sinks} | data)
    try:
        runs = _evaluate(model, names, shapes, batches)
    except Exception as e:  # onnxruntime's errors share no base class: fold nothing
        logger.debug("shape folding skipped: %s", e)
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    folded = 0
    for node_idx, slot, tensor in sinks:
        vals = [r[tensor] for r in runs]
        node = g.node[node_idx]
        lead = [r[node.input[0]].shape[:1] for r in runs] if node.op_type == "Reshape" else []
        value = _batch_free(node, slot, vals, batches, lead)
        if value is None:
            continue
        name = f"{tensor}__poem_{node_idx}_{slot}"
        g.initializer.append(numpy_helper.from_array(value, name))
        node.input[slot] = name
        folded += 1
    if not folded:
        return model
    _drop_dead(g, shape_set)
    del g.value_info[:]
    logger.info("folded %d shape computations into constants", folded)
    return m


def _input_shapes(model: onnx.ModelProto) -> tuple[dict[str, tuple[list[int], int]], tuple[int, ...]] | None:
    """Per graph input its static dims after the batch axis and its element type, and the batch sizes to
    evaluate (:data:`BATCHES`, or the one fixed batch size); ``None`` if a dim after the batch is dynamic."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, tuple[list[int], int]] = {}
    fixed: set[int] = set()
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not tt.HasField("shape") or not tt.shape.dim:
            return None
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim[1:]]
        if any(d <= 0 for d in dims):
            return None
        if tt.shape.dim[0].HasField("dim_value"):
            fixed.add(tt.shape.dim[0].dim_value)
        out[vi.name] = (dims, tt.elem_type)
    if len(fixed) > 1:
        return None
    return out, (tuple(fixed) if fixed else BATCHES)


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


def _evaluate(
    model: onnx.ModelProto, names: list[str], shapes: dict[str, tuple[list[int], int]], batches: tuple[int, ...]
) -> list[dict[str, np.ndarray]]:
    """Values of tensors ``names`` on zero inputs, one dict per batch size in ``batches``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in names)
    del m.graph.value_info[:]
    sess = session(m, optimize=False)
    runs = []
    for batch in batches:
        feed = {
            name: np.zeros([batch, *dims], dtype=onnx.helper.tensor_dtype_to_np_dtype(dtype))
            for name, (dims, dtype) in shapes.items()
        }
        runs.append(dict(zip(names, (np.asarray(v) for v in sess.run(names, feed)), strict=True)))
    return runs


def _batch_free(
    node: onnx.NodeProto, slot: int, vals: list[np.ndarray], batches: tuple[int, ...], lead: list[tuple[int, ...]]
) -> np.ndarray | None:
    """The constant to read in place of a sink with values ``vals`` at ``batches``, or ``None``.

    ``lead``: a Reshape's data input's first dimension in each run.  A Reshape shape ``[N, s1, ...]``
    becomes ``[-1, s1, ...]``, or ``[0, s1, ...]`` (copy the input's first dimension) when some ``s_i``
    is already -1 and the input's first dimension is the batch size.
    """
    if all(v.shape == vals[0].shape and np.array_equal(v, vals[0]) for v in vals):
        return vals[0]
    if node.op_type != "Reshape" or slot != 1 or any(v.ndim != 1 or v.shape != vals[0].shape for v in vals):
        return None
    rest = [v[1:] for v in vals]
    if not all(np.array_equal(r, rest[0]) for r in rest) or (rest[0] == 0).any():
        return None
    if len(batches) < 2 or [int(v[0]) for v in vals] != list(batches):
        return None
    if not (rest[0] == -1).any():
        return np.concatenate([[-1], rest[0]]).astype(vals[0].dtype)
    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
    if allowzero or [tuple(d) for d in lead] != [(b,) for b in batches]:
        return None
    return np.concatenate([[0], rest[0]]).astype(vals[0].dtype)


def _drop_dead(g: onnx.GraphProto, members: set[int]) -> None:
    """Remove shape-subgraph nodes whose outputs nothing reads any more (repeatedly), then the constants
    only they read (:func:`onnx_poem.fold.drop_unused`)."""
    from .fold import drop_unused, subgraph_reads  # fold.fold_constants calls this module first

    outputs = {o.name for o in g.output} | subgraph_reads(g)
    dead: set[int] = set()
    while True:
        read = {t for i, n in enumerate(g.node) if i not in dead for t in n.input} | outputs
        more = {i for i in members - dead if not any(o in read for o in g.node[i].output)}
        if not more:
            break
        dead |= more
    keep = [n for i, n in enumerate(g.node) if i not in dead]
    del g.node[:]
    g.node.extend(keep)
    drop_unused(g)
