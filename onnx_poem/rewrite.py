"""Apply a :class:`PrunePlan` to a model: indexing and attribute edits only, no numerics.

Order matters: first every consumer's new (input-pruned) weights are set, then
every group slices its constants along their channel axes (at the positions
of the kept atoms in each member) and applies the edits its op kinds recorded
(:class:`onnx_poem.coupling.groups.Edit`: shape constants, channel ``Pad``
amounts, Split and Slice ranges, grouped convs' ``group``, channel shuffles),
so a layer that is both a consumer of one group and the producer of another
ends up pruned on both axes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .coupling import ChannelGroup
from .coupling.edits import Rewrite
from .external import copy_except, remove_where
from .graph import GraphView
from .plan import ConsumerUpdate, PrunePlan


def bias_name(u: ConsumerUpdate) -> str:
    """The stored bias a consumer update writes: its own, or the one the rewrite creates for a layer without."""
    return u.bias if u.bias is not None else f"{u.weight}__poem_bias"


def apply_plan(view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan) -> onnx.ModelProto:
    """A new model with ``plan`` applied to ``view.model`` (which is not modified)."""
    rw = Rewrite(view)
    arrays = rw.arrays
    new_bias: dict[int, str] = {}  # consumer node → name of a bias the rewrite creates
    for dec in plan.decisions:
        for u in dec.updates:
            arrays[u.weight] = u.weight_value
            if u.bias is not None:
                old = rw.get(u.bias)
                arrays[u.bias] = u.bias_value.reshape(old.shape) if old.size == u.bias_value.size else u.bias_value
            else:
                name = bias_name(u)
                arrays[name] = u.bias_value
                new_bias[u.node] = name
    for dec in plan.decisions:
        g = groups[dec.group_id]
        keep = np.asarray(dec.keep, dtype=np.int64)
        for p in g.params:
            p.apply(rw, g, keep)
        for prod in g.producers:
            if prod in new_bias:
                wp = next(p for p in g.params if p.name == view.nodes[prod].input[1])
                arrays[new_bias[prod]] = np.take(arrays[new_bias[prod]], g.positions(wp.index, keep, wp.unit), axis=0)
        for e in g.edits:
            e.apply(rw, g, keep)
    assert set(arrays) <= rewritten(view, groups, plan), "rewritten() must name every changed initializer"
    model, stored = _copy_with(view.model, arrays)
    dropped: set[str] = set()
    for edit in rw.graph_edits():
        dropped.update(edit(model))
    _write(model, arrays, new_bias, stored)
    if dropped:  # after _write: its node indices refer to the original graph
        remove_where(model.graph.node, lambda n: bool(n.output) and n.output[0] in dropped)
    del model.graph.value_info[:]
    return model


def rewritten(view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan) -> set[str]:
    """The constants whose values :func:`apply_plan` changes or creates (every other initializer of the pruned
    model equals the original's of the same name: sessions of it share the original's arrays)."""
    names: set[str] = set()
    for dec in plan.decisions:
        g = groups[dec.group_id]
        names.update(u.weight for u in dec.updates)
        names.update(u.bias if u.bias is not None else bias_name(u) for u in dec.updates)
        for e in (*g.params, *g.edits):
            names.update(e.constants(view))
    return names


def _copy_with(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, set[str]]:
    """A copy of ``model`` whose initializers named in ``arrays`` hold those values (their own element
    type), and those names; each stored array leaves ``arrays`` as soon as its tensor is made (the
    pruned weights are not held twice while the copy is built).

    [R, memory] Built initializer by initializer: the replaced tensors' original data is never copied
    (``CopyFrom`` of the whole model, then replacing them, kept both in the copy's memory: protobuf
    does not free a replaced field's bytes until the message goes; a 2.5 GB model's pruned copy grew
    with every group).
    """
    out = onnx.ModelProto()
    copy_except(out, model, "graph")
    copy_except(out.graph, model.graph, "initializer")
    stored: set[str] = set()
    for t in model.graph.initializer:
        if t.name in arrays:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            value = np.asarray(arrays.pop(t.name), dtype=dtype)
            out.graph.initializer.append(numpy_helper.from_array(value, t.name))
            stored.add(t.name)
        else:
            out.graph.initializer.append(t)
    return out, stored


def _write(model: onnx.ModelProto, arrays: dict[str, np.ndarray], new_bias: dict[int, str], stored: set[str]) -> None:
    """Store the rest of ``arrays`` (``stored``: initializers :func:`_copy_with` wrote) and wire new biases;
    new ``Add`` nodes are inserted last, so every node index refers to the original graph."""
    g = model.graph
    done = set(stored)
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in arrays:
            for a in node.attribute:
                if a.name == "value":
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(a.t.data_type)
                    a.t.CopyFrom(numpy_helper.from_array(np.asarray(arrays[node.output[0]], dtype=dtype), a.t.name))
                    done.add(node.output[0])
    init_type = {t.name: t.data_type for t in g.initializer}
    inserts: list[tuple[int, onnx.NodeProto]] = []
    for node_idx, name in sorted(new_bias.items()):
        node = g.node[node_idx]
        w_dtype = onnx.helper.tensor_dtype_to_np_dtype(init_type.get(node.input[1], onnx.TensorProto.FLOAT))
        g.initializer.append(numpy_helper.from_array(np.asarray(arrays[name], dtype=w_dtype), name))
        done.add(name)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):  # a bias input of their own
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = name
            if node.op_type == "Gemm":  # tf2onnx writes beta = 0 for a Gemm without C: the new bias counts once
                kept = [a for a in node.attribute if a.name != "beta"]
                del node.attribute[:]
                node.attribute.extend([*kept, helper.make_attribute("beta", 1.0)])
        else:  # MatMul: y = MatMul(x, B) becomes Add(MatMul(x, B), bias) under the same output name
            out = node.output[0]
            node.output[0] = f"{out}__poem_mm"
            inserts.append((node_idx + 1, helper.make_node("Add", [node.output[0], name], [out], name=f"{name}_add")))
    for pos, n in sorted(inserts, key=lambda x: -x[0]):
        g.node.insert(pos, n)
    missing = set(arrays) - done
    if missing:
        raise RuntimeError(f"rewrite could not place constants: {sorted(missing)}")
