"""Apply a :class:`PrunePlan` to a model: indexing and attribute edits only, no numerics.

Order matters: first every consumer's new (input-pruned) weights are set, then
every group slices its constants along their channel axes (at the positions
of the kept atoms in each member), so a layer that is both a consumer of one
group and the producer of another ends up pruned on both axes.  Channel
``Pad`` amounts become the number of kept atoms in the padded regions.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .coupling import ChannelGroup
from .coupling.groups import ShuffleFix
from .external import copy_except, remove_where
from .graph import GraphView, opset_of
from .plan import ConsumerUpdate, PrunePlan


def bias_name(u: ConsumerUpdate) -> str:
    """The stored bias a consumer update writes: its own, or the one the rewrite creates for a layer without."""
    return u.bias if u.bias is not None else f"{u.weight}__poem_bias"


def apply_plan(view: GraphView, groups: dict[str, ChannelGroup], plan: PrunePlan) -> onnx.ModelProto:
    """A new model with ``plan`` applied to ``view.model`` (which is not modified)."""
    arrays: dict[str, np.ndarray] = {}
    new_bias: dict[int, str] = {}  # consumer node → name of a bias the rewrite creates

    def get(name: str) -> np.ndarray:
        if name not in arrays:
            v = view.const(name)
            assert v is not None, name
            arrays[name] = v
        return arrays[name]

    for dec in plan.decisions:
        for u in dec.updates:
            arrays[u.weight] = u.weight_value
            if u.bias is not None:
                old = get(u.bias)
                arrays[u.bias] = u.bias_value.reshape(old.shape) if old.size == u.bias_value.size else u.bias_value
            else:
                name = bias_name(u)
                arrays[name] = u.bias_value
                new_bias[u.node] = name
    group_attr: dict[int, int] = {}
    shape_fix: dict[str, np.ndarray] = {}
    for dec in plan.decisions:
        g = groups[dec.group_id]
        keep = np.asarray(dec.keep, dtype=np.int64)
        for p in g.params:
            arrays[p.name] = np.take(get(p.name), g.positions(p.index, keep, p.unit), axis=p.axis)
        for prod in g.producers:
            if prod in new_bias:
                wp = next(p for p in g.params if p.name == view.nodes[prod].input[1])
                arrays[new_bias[prod]] = np.take(arrays[new_bias[prod]], g.positions(wp.index, keep, wp.unit), axis=0)
        for r in g.reshapes:
            shape = shape_fix.get(r.shape, get(r.shape)).copy()
            shape.reshape(-1)[r.position] = len(g.positions(r.index, keep, r.unit)) * r.cols_per_channel // r.per
            shape_fix[r.shape] = arrays[r.shape] = shape
        for gr in g.grouped:
            group_attr[gr.node] = len(g.positions(gr.index, keep)) // gr.per_group
        for pad in g.pads:
            out_pos = g.positions(pad.index, keep)
            pads = get(pad.pads).copy()
            ax = pad.axis % pad.rank
            pads[ax] = int(np.sum(out_pos < pad.before))
            pads[ax + pad.rank] = int(np.sum(out_pos >= pad.size - pad.after))
            arrays[pad.pads] = pads
    split_attr: dict[int, list[int]] = {}
    for dec in plan.decisions:
        keep = np.asarray(dec.keep, dtype=np.int64)
        g = groups[dec.group_id]
        for rf in g.ranges:
            kept = g.positions(rf.index, keep)
            starts = [int(np.sum(kept < a)) for a, _ in rf.parts]
            sizes = [int(np.sum((kept >= a) & (kept < a + n))) for a, n in rf.parts]
            node = view.nodes[rf.node]
            if node.op_type == "Slice":
                for name, value in ((node.input[1], starts[0]), (node.input[2], starts[0] + sizes[0])):
                    arr = get(name).copy()
                    arr.reshape(-1)[rf.entry] = value
                    arrays[name] = arr
            else:  # a split-sizes input gets a constant of its own: exporters share equal ones between Splits
                split_attr[rf.node] = sizes
    gathers = [  # each pruned channel shuffle with the Gather indices of its kept channels
        (sh, shuffle_indices(sh, np.asarray(dec.keep, dtype=np.int64)))
        for dec in plan.decisions
        for sh in groups[dec.group_id].shuffles
    ]
    assert set(arrays) <= rewritten(view, groups, plan), "rewritten() must name every changed initializer"
    model, stored = _copy_with(view.model, arrays)
    dropped = _replace_shuffles(model, view, gathers)
    _write(model, arrays, new_bias, group_attr, split_attr, stored)
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
        names.update(p.name for p in g.params)
        names.update(r.shape for r in g.reshapes)
        names.update(pad.pads for pad in g.pads)
        for rf in g.ranges:
            if view.nodes[rf.node].op_type == "Slice":
                names.update(view.nodes[rf.node].input[1:3])
    return names


def shuffle_indices(sh: ShuffleFix, keep: np.ndarray) -> np.ndarray:
    """Gather indices that put the kept channels of a shuffle's input in their shuffled order.

    The pruned input holds the kept atoms by increasing input position, the pruned output
    by increasing output position: output ``j`` reads the input rank of the atom ``j``-th in
    output order.
    """
    src = np.asarray(sh.source, dtype=np.int64)[keep]
    dst = np.asarray(sh.target, dtype=np.int64)[keep]
    src, dst = src[src >= 0], dst[src >= 0]  # atoms of the group that pass this shuffle
    rank = np.argsort(np.argsort(src, kind="stable"), kind="stable")
    return rank[np.argsort(dst, kind="stable")].astype(np.int64)


def _replace_shuffles(
    model: onnx.ModelProto, view: GraphView, gathers: list[tuple[ShuffleFix, np.ndarray]]
) -> set[str]:
    """Each pruned shuffle's first Reshape becomes ``Gather(axis=1)`` writing the last Reshape's output.

    Returns the outputs of the shuffles' Transpose and last Reshape nodes, which nothing reads any more
    (to be removed once node indices no longer matter)."""
    g = model.graph
    dropped: set[str] = set()
    for sh, indices in gathers:
        node = g.node[sh.nodes[0]]
        name = f"{node.output[0]}__poem_gather"
        g.initializer.append(numpy_helper.from_array(indices, name))
        target = view.nodes[sh.nodes[2]].output[0]
        g.node[sh.nodes[2]].output[0] = f"{target}__poem_unused"
        dropped |= {g.node[sh.nodes[1]].output[0], g.node[sh.nodes[2]].output[0]}
        source = node.input[0]
        node.op_type = "Gather"
        del node.input[:]
        node.input.extend([source, name])
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("axis", 1))
        node.output[0] = target
    return dropped


def _set_split(model: onnx.ModelProto, idx: int, sizes: list[int]) -> None:
    """Give Split node ``idx`` explicit sizes (attribute before opset 13, input after; opset 18's
    ``num_outputs`` attribute is dropped, as the two may not be given together)."""
    node = model.graph.node[idx]
    kept = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept)
    for a in node.attribute:
        if a.name == "split":
            del a.ints[:]
            a.ints.extend(sizes)
            return
    opset = opset_of(model)
    if opset < 13:
        node.attribute.append(helper.make_attribute("split", sizes))
        return
    name = f"{node.output[0]}__poem_split"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(sizes, dtype=np.int64), name))
    while len(node.input) < 2:
        node.input.append("")
    old, node.input[1] = node.input[1], name
    if old and not any(old in n.input for n in model.graph.node):  # the sizes it had were its own
        remove_where(model.graph.initializer, lambda t: t.name == old)


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


def _write(
    model: onnx.ModelProto,
    arrays: dict[str, np.ndarray],
    new_bias: dict[int, str],
    group_attr: dict[int, int],
    split_attr: dict[int, list[int]],
    stored: set[str],
) -> None:
    """Store the rest of ``arrays`` (``stored``: initializers :func:`_copy_with` wrote), wire new biases,
    set ``group``/split sizes; new ``Add`` nodes are inserted last, so every node index refers to the
    original graph."""
    g = model.graph
    done = set(stored)
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in arrays:
            for a in node.attribute:
                if a.name == "value":
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(a.t.data_type)
                    a.t.CopyFrom(numpy_helper.from_array(np.asarray(arrays[node.output[0]], dtype=dtype), a.t.name))
                    done.add(node.output[0])
    for idx, groups in group_attr.items():
        for a in g.node[idx].attribute:
            if a.name == "group":
                a.i = groups
    for idx, sizes in split_attr.items():
        _set_split(model, idx, sizes)
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
