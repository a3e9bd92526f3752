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

from collections.abc import Collection, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .coupling import ChannelGroup
from .coupling.edits import Rewrite
from .external import Overlay, copy_except, remove_where, stub_of
from .graph import GraphView, subgraph_reads
from .plan import ConsumerUpdate, Data, PrunePlan
from .plan import value as plan_value


def bias_name(u: ConsumerUpdate) -> str:
    """The stored bias a consumer update writes: its own, or the one the rewrite creates for a layer without."""
    return u.bias if u.bias is not None else f"{u.weight}__poem_bias"


def apply_plan(view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan) -> onnx.ModelProto:
    """A new model with ``plan`` applied to ``view.model`` (which is not modified)."""
    model, _ = _apply(view, groups, plan, frozenset())
    return model


def apply_plan_stubbed(
    view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """:func:`apply_plan` for the cascade's sessions: the model's large floating-point initializers (those of
    ``view.weights``) are external-data stubs (:func:`onnx_poem.external.stub_of`), and the values of the ones
    the plan changed come as read-only arrays (the others are the original's, ``view.weights``).

    [R, speed, memory] The cascade rebuilt a full copy of the model after every group: a 2.5 GB MLP's
    copy took 6-10 s of protobuf copying per group (463 s of its 1749 s run, 37 groups) and held the
    unchanged weights a second time.  The stubbed copy holds no weight data; the final model is built
    once, by :func:`apply_plan`.  Initializers read inside subgraphs keep their data (onnxruntime reads those
    from the model itself).
    """
    inline = subgraph_reads(view.model.graph)
    return _apply(view, groups, plan, frozenset(n for n in view.weights if n not in inline))


def session_arrays(
    view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan, values: Mapping[str, np.ndarray]
) -> Mapping[str, np.ndarray]:
    """The arrays a session of :func:`apply_plan_stubbed`'s model takes: the rewritten weights' ``values``
    (as returned, or held elsewhere), the original's (``view.weights``) for the rest."""
    return Overlay(values, view.weights.excluding(rewritten(view, groups, plan)))


def _apply(
    view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan, stub: frozenset[str]
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rw = Rewrite(view)
    arrays = rw.arrays
    new_bias: dict[int, str] = {}  # consumer node → name of a bias the rewrite creates
    for dec in plan.decisions:
        for u in dec.updates:
            arrays[u.weight] = u.weight_data  # a stored one is read when used (rw.get, _copy_with): one at a time
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
                arrays[new_bias[prod]] = np.take(rw.get(new_bias[prod]), g.positions(wp.index, keep, wp.unit), axis=0)
        for e in g.edits:
            e.apply(rw, g, keep)
    assert set(arrays) <= rewritten(view, groups, plan), "rewritten() must name every changed initializer"
    model, stored, values = _copy_with(view.model, arrays, stub)
    dropped: set[str] = set()
    for edit in rw.graph_edits():
        dropped.update(edit(model))
    _write(model, arrays, new_bias, stored)
    if dropped:  # after _write: its node indices refer to the original graph
        remove_where(model.graph.node, lambda n: bool(n.output) and n.output[0] in dropped)
    del model.graph.value_info[:]
    return model, values


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


def _copy_with(
    model: onnx.ModelProto, arrays: dict[str, Data], stub: Collection[str] = ()
) -> tuple[onnx.ModelProto, set[str], dict[str, np.ndarray]]:
    """A copy of ``model`` whose initializers named in ``arrays`` hold those values (their own element
    type), those names, and the values of the ones left as stubs; each stored array leaves ``arrays`` as
    soon as its tensor is made (the pruned weights are not held twice while the copy is built).

    ``stub``: initializers written as external-data stubs instead (:func:`onnx_poem.external.stub_of`);
    a changed one's value is returned (read-only, contiguous, its own element type).

    [R, memory] Built initializer by initializer: the replaced tensors' original data is never copied
    (``CopyFrom`` of the whole model, then replacing them, kept both in the copy's memory: protobuf
    does not free a replaced field's bytes until the message goes; a 2.5 GB model's pruned copy grew
    with every group).
    """
    out = onnx.ModelProto()
    copy_except(out, model, "graph")
    copy_except(out.graph, model.graph, "initializer")
    stored: set[str] = set()
    values: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        if t.name in arrays:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            value = np.ascontiguousarray(plan_value(arrays.pop(t.name)), dtype=dtype)
            if t.name in stub:
                value = value.view()  # the flag on a view: the plan's own array may be this one
                value.flags.writeable = False
                values[t.name] = value
                out.graph.initializer.append(stub_of(t.name, t.data_type, value.shape))
            else:
                out.graph.initializer.append(numpy_helper.from_array(value, t.name))
            stored.add(t.name)
        elif t.name in stub:
            out.graph.initializer.append(stub_of(t.name, t.data_type, t.dims))
        else:
            out.graph.initializer.append(t)
    return out, stored, values


def _write(model: onnx.ModelProto, arrays: dict[str, Data], new_bias: dict[int, str], stored: set[str]) -> None:
    """Store the rest of ``arrays`` (``stored``: initializers :func:`_copy_with` wrote) and wire new biases;
    new ``Add`` nodes are inserted last, so every node index refers to the original graph."""
    g = model.graph
    done = set(stored)
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in arrays:
            for a in node.attribute:
                if a.name == "value":
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(a.t.data_type)
                    v = np.asarray(plan_value(arrays[node.output[0]]), dtype=dtype)
                    a.t.CopyFrom(numpy_helper.from_array(v, a.t.name))
                    done.add(node.output[0])
    init_type = {t.name: t.data_type for t in g.initializer}
    inserts: list[tuple[int, onnx.NodeProto]] = []
    for node_idx, name in sorted(new_bias.items()):
        node = g.node[node_idx]
        w_dtype = onnx.helper.tensor_dtype_to_np_dtype(init_type.get(node.input[1], onnx.TensorProto.FLOAT))
        g.initializer.append(numpy_helper.from_array(np.asarray(plan_value(arrays[name]), dtype=w_dtype), name))
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
