"""Rotate a transformer's residual stream and keep its first ``k`` rotated dimensions.

With ``C = I − 11ᵀ/D`` (centring over the features) and ``Q_k`` the first ``k`` columns of an orthogonal
``Q`` (``D × D``):

* every writer ``W`` (its feature axis last) becomes ``W C Q_k``: the stream ``x`` becomes ``x_r = x C Q_k``,
  free of its mean over the features, ``k`` wide;
* every ``LayerNormalization(x; γ, β, ε)`` becomes the RMS normalisation ``n_r = x_r / sqrt(|x_r|²/D + ε)``:
  with ``x`` centred, ``LN(x) = γ ⊙ x C/sqrt(|x C|²/D + ε) + β``, and ``|x C Q| = |x C|`` for ``k = D``;
* every reader ``B`` (features on its rows) of that LayerNorm becomes ``Q_kᵀ diag(γ) B``, its bias ``b + β B``
  (a ``MatMul`` without a bias gets an ``Add``, a ``Gemm`` its ``C``); a LayerNorm whose output something else
  reads is followed by the back-projection ``n_r Q_kᵀ diag(γ) + β`` to the full width instead.

A post-LN block adds a LayerNorm's *output* ``h = γ ⊙ n + β`` into the next sum (the residual of BERT-style
encoders): that residual ``Add`` reads ``n_r Q_inᵀ diag(γ) C Q_out + β C Q_out`` instead, a ``(k, k)``
``MatMul`` and a bias per LayerNorm so carried (``HiddenStream.carried``), which is the price of slicing a
post-LN model: ``k²`` per token per LayerNorm.

With ``k = D`` the model computes what the original does (up to rounding); with ``k < D`` the dropped rotated
dimensions are the ones :func:`onnx_poem.solvers.rotation.principal_basis` found to carry the least energy.
Nothing else changes: the rest of the pipeline prunes heads and FFN neurons of the result as of any model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..fold import drop_unused
from ..graph import constant_tensors, opset_of, working_copy
from .norms import NormMatch
from .stream import HiddenStream


def slice_hidden(
    model: onnx.ModelProto, stream: HiddenStream, bases: np.ndarray | Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """A copy of ``model`` (the one ``stream`` was found in; not modified) whose stream is ``x C Q``.

    Args:
        bases: ``(D, k)`` orthonormal columns ``Q``, ``k <= D``: one for the whole stream, or one per stretch
            (:attr:`HiddenStream.segment`: the tensors normalisations read → their ``Q``); a residual ``Add`` that
            carries one stretch into the next then reads its skip through ``Q_inᵀ Q_out`` ``(k, k)``.
    """
    per = {a: bases for a in set(stream.segment.values())} if isinstance(bases, np.ndarray) else dict(bases)
    d, k = next(iter(per.values())).shape
    assert d == stream.size and all(q.shape == (d, k) for q in per.values())
    out = working_copy(model, inplace=False)
    consts = _Constants(out, _touched(stream))
    dtype = consts.get(stream.norms[0].match.scale).dtype  # the stream's element type (float16 models stay so)

    def centred(q: np.ndarray) -> np.ndarray:
        return q - q.mean(axis=0, keepdims=True) if stream.centred else q  # C Q: each column's mean removed

    for w in stream.writers:
        consts.set(w.name, _along(consts.get(w.name), w.axis, centred(per[stream.segment[w.tensor]])))
    for fix in stream.fixes:
        shape = consts.get(fix.name).copy()
        shape.reshape(-1)[fix.position] = k
        consts.set(fix.name, shape)
    nodes = list(out.graph.node)
    added: list[onnx.NodeProto] = []
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for norm in stream.norms:
        m = norm.match
        gamma, beta = _scale_shift(consts, m, d)
        back = per[m.input].T * gamma[None, :]  # (k, D): Q_kᵀ diag(γ)
        rms = _rms_nodes(out, m, d, dtype)
        if norm.project:
            mid = f"{m.output}__poem_normed"
            rms[-1].output[0] = mid
            p_name, b_name = f"{m.output}__poem_back", f"{m.output}__poem_beta"
            consts.add(p_name, back.astype(dtype))
            consts.add(b_name, beta.astype(dtype))
            rms += [
                helper.make_node("MatMul", [mid, p_name], [f"{mid}_mm"], name=f"{p_name}_matmul"),
                helper.make_node("Add", [f"{mid}_mm", b_name], [m.output], name=f"{b_name}_add"),
            ]
        else:
            for r in norm.readers:
                b = consts.get(r.weight)
                b64 = b.astype(np.float64)
                consts.set(r.weight, _rows(b64, r.axis, back).astype(b.dtype))
                shift = beta @ (b64 if r.axis == 0 else b64.T)  # (m,): β B
                if not shift.any():
                    continue
                if r.bias is not None:
                    old = consts.get(r.bias)
                    consts.set(r.bias, (old + shift.reshape(old.shape) / _beta(nodes[r.node])).astype(old.dtype))
                else:
                    added += _new_bias(out, consts, nodes[r.node], shift)
        replaced |= {i: [] for i in m.nodes} | {m.nodes[0]: rms}
    before: dict[int, list[onnx.NodeProto]] = {}  # the skips' re-rotations, put before their Add
    for node, slot in stream.skips:
        n = nodes[node]
        source = n.input[slot]
        q_in, q_out = per[stream.segment[source]], per[stream.segment[n.output[0]]]
        if q_in is q_out:
            continue
        name = f"{n.output[0]}__poem_skip{slot}"
        consts.add(name, (q_in.T @ q_out).astype(dtype))
        before.setdefault(node, []).append(
            helper.make_node("MatMul", [source, name], [f"{name}_out"], name=f"{name}_matmul")
        )
        n.input[slot] = f"{name}_out"
    for node, slot, source in stream.carried:  # post-LN: h = γ ⊙ n + β carried into the next stretch
        n = nodes[node]
        norm = next(x for x in stream.norms if x.match.input == source)
        q_out = centred(per[stream.segment[n.output[0]]])
        name = f"{n.output[0]}__poem_carry{slot}"
        if norm.project:  # its output is back at full width already (something else reads it): h C Q_out
            gamma, beta, q_in = np.ones(d), np.zeros(d), np.eye(d)
        else:
            (gamma, beta), q_in = _scale_shift(consts, norm.match, d), per[source]
        consts.add(f"{name}_w", ((q_in.T * gamma[None, :]) @ q_out).astype(dtype))  # Q_inᵀ diag(γ) C Q_out
        consts.add(f"{name}_b", (beta @ q_out).astype(dtype))  # β C Q_out
        before.setdefault(node, []).extend(
            [
                helper.make_node("MatMul", [n.input[slot], f"{name}_w"], [f"{name}_mm"], name=f"{name}_matmul"),
                helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [f"{name}_out"], name=f"{name}_add"),
            ]
        )
        n.input[slot] = f"{name}_out"
    flat: list[onnx.NodeProto] = []
    for i, n in enumerate(nodes):
        flat += before.get(i, []) + replaced.get(i, [n])
    del out.graph.node[:]
    out.graph.node.extend(flat + added)
    _sort(out)
    drop_unused(out.graph)
    del out.graph.value_info[:]
    return out


def _scale_shift(consts: _Constants, m: NormMatch, d: int) -> tuple[np.ndarray, np.ndarray]:
    """A normalisation's ``γ`` and ``β`` ``(D,)`` in float64 (``β`` zero where it has none)."""
    gamma = consts.get(m.scale).astype(np.float64).reshape(-1)
    beta = consts.get(m.bias).astype(np.float64).reshape(-1) if m.bias is not None else np.zeros(d)
    return gamma, beta


def _along(w: np.ndarray, axis: int, cq: np.ndarray) -> np.ndarray:
    """``w`` with its ``axis`` (``D`` long) multiplied by ``cq`` ``(D, k)``: ``w C Q_k`` over that axis."""
    moved = np.moveaxis(w.astype(np.float64), axis, -1) @ cq
    return np.ascontiguousarray(np.moveaxis(moved, -1, axis)).astype(w.dtype)


def _rows(b: np.ndarray, axis: int, back: np.ndarray) -> np.ndarray:
    """A reader's weight with its feature ``axis`` (``D``) replaced by ``back @ ·`` (``k``): ``Q_kᵀ diag(γ) B``."""
    return back @ b if axis == 0 else b @ back.T


def _beta(node: onnx.NodeProto) -> float:
    for a in node.attribute:
        if a.name == "beta" and node.op_type == "Gemm":
            return float(a.f) or 1.0
    return 1.0


def _new_bias(
    model: onnx.ModelProto, consts: _Constants, node: onnx.NodeProto, shift: np.ndarray
) -> list[onnx.NodeProto]:
    """Add ``shift`` to a reader without a bias: a ``Gemm``'s ``C`` (``beta`` 1), after a ``MatMul`` an ``Add``."""
    name = f"{node.input[1]}__poem_beta_bias"
    consts.add(name, shift.astype(consts.get(node.input[1]).dtype))
    if node.op_type == "Gemm":
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        kept = [a for a in node.attribute if a.name != "beta"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("beta", 1.0)])
        return []
    out = node.output[0]
    node.output[0] = f"{out}__poem_mm"
    return [helper.make_node("Add", [node.output[0], name], [out], name=f"{name}_add")]


def _rms_nodes(model: onnx.ModelProto, norm: NormMatch, d: int, dtype: np.dtype) -> list[onnx.NodeProto]:
    """Nodes computing ``n = x / sqrt(Σ x²/D + ε)`` over the last axis of ``norm``'s input, written to its output."""
    x, p = norm.input, f"{norm.output}__poem"
    inv = numpy_helper.from_array(np.asarray(1.0 / d, dtype=dtype), f"{p}_inv_d")
    eps = numpy_helper.from_array(np.asarray(norm.epsilon, dtype=dtype), f"{p}_eps")
    model.graph.initializer.extend([inv, eps])
    if opset_of(model) >= 18:
        axes = numpy_helper.from_array(np.asarray([-1], dtype=np.int64), f"{p}_axes")
        model.graph.initializer.append(axes)
        square = helper.make_node("ReduceSumSquare", [x, axes.name], [f"{p}_ss"], keepdims=1, name=f"{p}_ss")
    else:
        square = helper.make_node("ReduceSumSquare", [x], [f"{p}_ss"], axes=[-1], keepdims=1, name=f"{p}_ss")
    return [
        square,
        helper.make_node("Mul", [f"{p}_ss", inv.name], [f"{p}_ms"], name=f"{p}_ms"),
        helper.make_node("Add", [f"{p}_ms", eps.name], [f"{p}_var"], name=f"{p}_var"),
        helper.make_node("Sqrt", [f"{p}_var"], [f"{p}_rms"], name=f"{p}_rms"),
        helper.make_node("Div", [x, f"{p}_rms"], [norm.output], name=f"{p}_div"),
    ]


def _sort(model: onnx.ModelProto) -> None:
    """Put the nodes in an order where every input is computed before it is read (the bias ``Add``s were
    appended last)."""
    g = model.graph
    ready = {t.name for t in g.initializer} | {i.name for i in g.input} | {""}
    pending, order = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(t in ready for t in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            order += rest  # inputs from outer scopes: leave as they were
            break
        pending = rest
    del g.node[:]
    g.node.extend(order)


def _touched(stream: HiddenStream) -> set[str]:
    """The constants :func:`slice_hidden` reads or rewrites."""
    names = {w.name for w in stream.writers} | {f.name for f in stream.fixes}
    for norm in stream.norms:
        names |= {norm.match.scale, norm.match.bias or ""}
        names |= {t for r in norm.readers for t in (r.weight, r.bias or "")}
    return names - {""}


class _Constants:
    """Read and replace constants (initializers or ``Constant``-node values, :func:`constant_tensors`) by name."""

    def __init__(self, model: onnx.ModelProto, names: set[str]) -> None:
        self.model = model
        self.tensors = constant_tensors(model.graph, names)

    def get(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.tensors[name])

    def set(self, name: str, value: np.ndarray) -> None:
        t = self.tensors[name]
        t.CopyFrom(numpy_helper.from_array(value, t.name))

    def add(self, name: str, value: np.ndarray) -> None:
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        self.tensors[name] = self.model.graph.initializer[-1]
