"""ONNX model access: loading, saving, a read-only index of the graph, sub-models.

This is the only module that imports ``onnx_graphsurgeon`` (used to cut a model
down to the nodes that produce a chosen set of tensors).  Everything else in
the package sees a :class:`GraphView`: producers and consumers of every tensor,
constant values (initializers *and* ``Constant`` nodes) as NumPy arrays,
attributes and inferred shapes.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import numpy_helper

from .arena import release_arena, use_shared_arena
from .device import check_started, deterministic, weights_in_place
from .device import providers as device_providers
from .errors import ModelError, OutputError
from .external import (
    FLOAT_TYPES,
    STUB_LOCATION,
    WeightPool,
    encode,
    is_stub,
    remove_where,
    shape_nbytes,
    stored_bytes,
    stub_values,
    stubbed,
    too_big,
)
from .outputs import write_together
from .threads import ort_threads

logger = logging.getLogger(__name__)

Shape = tuple[int | None, ...]


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load and check an ONNX model file.

    Raises:
        ModelError: the file is missing, unreadable, not ONNX, or fails ``onnx.checker``.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelError(f"model path is not a file: {p}")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf raises several unrelated types
        raise ModelError(f"cannot read {p} as an ONNX model: {type(e).__name__}: {e}") from e
    if len(model.graph.node) == 0:
        raise ModelError(f"{p} holds no graph nodes (not an ONNX model?)")
    check_model(model, what=str(p), error=ModelError)
    return model


def input_files(path: str | os.PathLike[str]) -> list[Path]:
    """The model file and every external-data file its tensors (subgraphs included) read.

    Reads the protobuf without its external data; a file that cannot be parsed gives just itself.
    """
    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:
        return [p]
    files = [p]
    for t in _all_tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc:
                files.append(p.parent / loc)
    return list(dict.fromkeys(files))


def _all_tensors(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                yield from _all_tensors(sub)


def check_model(model: onnx.ModelProto, *, what: str, error: type[Exception]) -> None:
    """Run ``onnx.checker.check_model(full_check=True)``; raise ``error`` with one line on failure.

    A model past protobuf's 2 GB limit (:func:`onnx_poem.external.too_big`) cannot be handed to the
    checker whole: its :func:`skeleton` gets the full check and every large initializer's data size is
    checked against its type and shape (what the checker would add).
    """
    try:
        if too_big(model):
            onnx.checker.check_model(skeleton(model), full_check=True)
            _check_sizes(model)
        elif stored_bytes(model) >= CHECK_FROM_FILE_BYTES and not _refers_outside(model):
            _check_from_file(model)
        else:
            onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{what} fails the ONNX checker: {first}") from e


#: models holding this many bytes of tensor data are checked from a file (:func:`_check_from_file`)
CHECK_FROM_FILE_BYTES = 64 << 20


def _check_from_file(model: onnx.ModelProto) -> None:
    """The full check of ``model`` saved with external data in a temporary folder, and :func:`_check_sizes`.

    [R, memory] Handed a model, the checker serialises it and parses the bytes again: two more copies of
    the weights for the length of the check (a 330 MB pruned BERT-base: 1822 → 2468 MiB, the highest point
    of its prune).  Saved with its large tensors as external data (:func:`onnx_poem.external.encode`, one
    tensor in memory at a time), the model the checker reads holds no weights; the same checks run on
    its structure, types and shapes (shape inference included), the external references are checked to
    exist, and :func:`_check_sizes` checks what the checker reads of inline data, each tensor's byte count.
    """
    with tempfile.TemporaryDirectory(prefix="onnx-poem-check-") as d:
        path = Path(d) / "model.onnx"
        try:
            write_together(encode(model, path, external=True), force=False)
        except OutputError:  # no room for the copy: not the model's fault, so the checker reads it from memory
            onnx.checker.check_model(model, full_check=True)
            return
        onnx.checker.check_model(str(path), full_check=True)
    _check_sizes(model)


def _refers_outside(model: onnx.ModelProto) -> bool:
    """Some tensor of ``model`` (an initializer, a ``Constant`` value, a subgraph's; :func:`_all_tensors`) still
    refers to external data (a caller's model loaded without it): the file route would look for that data
    beside the temporary file, so such a model is checked in memory."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model.graph))


def _check_sizes(model: onnx.ModelProto) -> None:
    """Every raw-data initializer holds exactly the bytes its type and shape need."""
    for t in model.graph.initializer:
        if t.HasField("raw_data"):
            need, have = shape_nbytes(t), len(t.raw_data)
            if have != need:
                raise ModelError(f"initializer {t.name!r} holds {have} bytes, its shape needs {need}")


def working_copy(model: onnx.ModelProto, inplace: bool) -> onnx.ModelProto:
    """``model`` itself with ``inplace`` (the caller's own copy, to change in place), else a copy of it."""
    if inplace:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the values of its large float initializers: they become graph inputs of the same
    type and shape.

    [R, speed] Their values never drive shape inference or the checker's structural
    checks (types and shapes do, and those stay), and copying or serialising them
    dominates both (5.5 s per check, 9.5 s per inference of a 435 MB BERT-base).
    Initializers under :data:`STRUCTURE_LIMIT` elements or of integer type (shapes,
    axes, sizes) keep their values; stubs (:func:`onnx_poem.external.is_stub`, a cascade model's) never have any.
    """
    g = model.graph
    out = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(out, f, getattr(model, f))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    sg = out.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    declared = {i.name for i in g.input}
    for t in g.initializer:
        size = int(np.prod(t.dims)) if len(t.dims) else 1
        if (size < STRUCTURE_LIMIT or t.data_type not in FLOAT_TYPES) and not is_stub(t):
            sg.initializer.append(t)
        elif t.name not in declared:
            sg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def check_structure(model: onnx.ModelProto, *, what: str, error: type[Exception]) -> None:
    """:func:`check_model` on :func:`skeleton` ``(model)``: the structure, types and shapes, not the weights'
    values (the final model still gets the full check)."""
    check_model(skeleton(model), what=what, error=error)


#: initializers with fewer elements keep their values in :func:`check_structure`
STRUCTURE_LIMIT = 4096


@dataclass(frozen=True)
class Use:
    """One input slot of a node that reads a tensor."""

    node: int
    slot: int


@dataclass
class GraphView:
    """Read-only index over a ``ModelProto`` (nodes are referred to by their position).

    Attributes:
        model: the indexed model (not modified).
        producer: tensor name → index of the node that outputs it.
        uses: tensor name → the (node, input slot) pairs that read it.
        outputs: names of the graph outputs.
        inputs: names of the graph inputs that are not initializers.
        shapes: tensor name → inferred shape (``None`` for unknown dimensions).
        dtypes: tensor name → inferred element type (where inference resolves it).
        captured: names read inside subgraphs (``If``/``Loop``/``Scan`` bodies), which
            may be outer-scope tensors used implicitly.
    """

    model: onnx.ModelProto
    producer: dict[str, int] = field(default_factory=dict)
    uses: dict[str, list[Use]] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)
    inputs: list[str] = field(default_factory=list)
    shapes: dict[str, Shape] = field(default_factory=dict)
    dtypes: dict[str, np.dtype[Any]] = field(default_factory=dict)
    captured: set[str] = field(default_factory=set)
    _init: dict[str, onnx.TensorProto] = field(default_factory=dict)
    _const_node: dict[str, int] = field(default_factory=dict)
    _pool: WeightPool | None = None

    @classmethod
    def build(cls, model: onnx.ModelProto, *, input_shapes: Mapping[str, Sequence[int]] | None = None) -> GraphView:
        """Index ``model``; ``input_shapes`` (concrete shapes) sharpen shape inference."""
        view = cls(model=model)
        g = model.graph
        view._init = {t.name: t for t in g.initializer}
        view.inputs = [i.name for i in g.input if i.name not in view._init]
        view.outputs = {o.name for o in g.output}
        for i, n in enumerate(g.node):
            for o in n.output:
                if o:
                    view.producer[o] = i
            for s, t in enumerate(n.input):
                if t:
                    view.uses.setdefault(t, []).append(Use(i, s))
            if n.op_type == "Constant" and len(n.output) == 1:
                view._const_node[n.output[0]] = i
        view.captured = subgraph_reads(g)
        view.shapes, view.dtypes = infer_shapes(model, input_shapes or {})
        if input_shapes:
            view._observe(input_shapes)
        return view

    def _observe(self, input_shapes: Mapping[str, Sequence[int]]) -> None:
        """Fill the shapes shape inference left open (shape arithmetic over dynamic dimensions, e.g. an
        OCR model's computed reshapes; onnxruntime's contrib ops) from one onnxruntime run of zero inputs
        of ``input_shapes``.

        A tensor of unknown element type is assumed to have its producer's first input's type; if that
        guess makes the run fail, only the tensors of known type are observed; a run that still fails
        leaves the inferred shapes as they are.
        """
        if any(n not in input_shapes for n in self.inputs):
            return
        open_ = [
            (o, n) for n in self.nodes for o in n.output if o and (self.shapes.get(o) is None or None in self.shapes[o])
        ]
        guessed: dict[str, np.dtype[Any]] = {}
        for o, n in open_:  # in node order: a guess propagates down a chain of unknown ops
            source = n.input[0] if n.input else ""
            if o not in self.dtypes and (source in self.dtypes or source in guessed):
                guessed[o] = self.dtypes.get(source, guessed.get(source, np.dtype(np.float32)))
        feed = {
            n: np.zeros(tuple(input_shapes[n]), dtype=self.dtypes.get(n, np.dtype(np.float32))) for n in self.inputs
        }
        known = [o for o, _ in open_ if o in self.dtypes]
        for todo in (known + list(guessed), known):
            if not todo:
                return
            try:
                values = session(
                    with_outputs(self.model, todo, dtypes={**guessed, **self.dtypes}),
                    values=self.shapes_need_values,  # shapes only (zero inputs)
                ).run(todo, feed)
            except Exception as e:  # only limits what can be pruned
                logger.debug("shapes not observed: %s", e)
                continue
            for name, value in zip(todo, values, strict=True):
                self.shapes[name] = tuple(int(d) for d in np.shape(value))
                self.dtypes.setdefault(name, np.asarray(value).dtype)
            logger.debug("observed the shapes of %d tensors shape inference left open", len(todo))
            return

    @property
    def nodes(self) -> Sequence[onnx.NodeProto]:
        return self.model.graph.node

    @property
    def shapes_need_values(self) -> bool:
        """A run for shapes alone needs the real weights (an op of :data:`VALUE_SHAPED`); otherwise the large
        floating-point weights may be zeros (``session(..., values=False)``)."""
        return any(n.op_type in VALUE_SHAPED for n in self.nodes)

    def opset(self) -> int:
        """The model's default-domain opset version."""
        return opset_of(self.model)

    def node_label(self, i: int) -> str:
        """A human-readable, stable name for node ``i``."""
        n = self.nodes[i]
        return n.name or f"{n.op_type}#{i}"

    def is_const(self, name: str) -> bool:
        return name in self._init or name in self._const_node

    @property
    def weights(self) -> WeightPool:
        """The arrays of the model's large initializers that every session of it shares (made on first use)."""
        if self._pool is None:
            self._pool = WeightPool(self.model)
        return self._pool

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or ``Constant`` node output, else ``None``."""
        if name in self._init:
            return numpy_helper.to_array(self._init[name])
        if name in self._const_node:
            node = self.nodes[self._const_node[name]]
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def attr(self, i: int, name: str, default: Any = None) -> Any:
        for a in self.nodes[i].attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def crossing(self, position: int) -> list[str]:
        """Tensors produced by nodes before ``position`` and read by a node at or after it, in node order.

        ``Constant`` node outputs are not among them: a segment keeps the node (old paddle2onnx exports
        store every weight so), so nothing is cached per batch for it."""
        out = []
        for n in self.nodes[:position]:
            if n.op_type == "Constant":
                continue
            out += [t for t in n.output if t and any(u.node >= position for u in self.uses.get(t, []))]
        return out

    def users(self, tensor: str) -> list[Use]:
        return self.uses.get(tensor, [])

    def const_users(self, name: str) -> int:
        """How many node inputs read constant ``name`` (weights shared by two nodes are not pruned)."""
        return len(self.uses.get(name, []))


def subgraph_reads(g: onnx.GraphProto) -> set[str]:
    """Every tensor name read inside the subgraphs (``If``/``Loop``/``Scan`` bodies) of ``g``'s nodes, recursively."""
    names: set[str] = set()
    for n in g.node:
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                names |= _referenced(sub)
    return names


def _referenced(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a (sub)graph's nodes read, recursively."""
    names: set[str] = set()
    for n in graph.node:
        names.update(t for t in n.input if t)
        for a in n.attribute:
            for sub in [a.g] if a.HasField("g") else list(a.graphs):
                names |= _referenced(sub)
    return names


def infer_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]
) -> tuple[dict[str, Shape], dict[str, np.dtype[Any]]]:
    """Shapes and element types of every tensor that ONNX shape inference can resolve.

    ``input_shapes`` replace the declared input shapes (e.g. a fixed batch), so
    symbolic dimensions resolve where the graph allows.
    """
    m = skeleton(model)  # values of large weights do not matter here, and copying them is costly
    del m.graph.value_info[:]
    for vi in m.graph.input:
        if vi.name in input_shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, input_shapes[vi.name], strict=False):
                d.Clear()
                d.dim_value = int(v)
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception as e:  # inference failure only limits what can be pruned
        logger.warning("shape inference failed (%s); channel counts come from weights only", e)
    out: dict[str, Shape] = {}
    types: dict[str, np.dtype[Any]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        tt = vi.type.tensor_type
        if tt.elem_type:
            types[vi.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if not tt.HasField("shape"):
            continue
        out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    for t in model.graph.initializer:
        out[t.name] = tuple(t.dims)
        types[t.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    return out, types


#: ops whose output shape can depend on the values of their (possibly computed) tensor inputs: a run for shapes
#: alone then needs the real weights.  [R, memory] ``Range`` is not one: its inputs are scalars, and only
#: floating-point initializers of :data:`onnx_poem.external.SESSION_MIN_BYTES` or more become zeros
#: (BERT-base's position ids come from a ``Range``: with it listed, the shape runs converted its 0.44 GB of
#: weights, 340 MiB more at the view's build, for the same shapes)
VALUE_SHAPED = ("NonZero", "Unique", "Compress", "TopK", "NonMaxSuppression", "Loop", "If", "Scan")


def session(
    model: onnx.ModelProto,
    *,
    threads: int = 0,
    optimize: bool = True,
    values: bool = True,
    outputs: Sequence[str] | None = None,
    shared: Mapping[str, np.ndarray] | None = None,
    prepack: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``model`` (warnings silenced; ``optimize=False``: no graph optimisation).

    ``values=False``: for a run whose outputs' shapes alone are wanted (a MACs count), the large
    floating-point weights are zeros that take no memory (:func:`onnx_poem.external.stub_weights`), and
    onnxruntime neither optimises the graph nor re-lays the weights out (which would touch them).
    ``outputs``: the session's outputs instead of the model's (any tensors, element types left open),
    without a copy of the model.  ``shared``: arrays that hold the values of ``model``'s initializers of
    those names (a :class:`onnx_poem.external.WeightPool`), used in place.  ``prepack=False``: onnxruntime
    keeps no re-laid-out copy of the MatMul/Gemm weights (a second copy of an MLP's weights).

    The large weights are handed to onnxruntime as arrays (:func:`onnx_poem.external.stub_weights`), not
    serialised with the graph: models past protobuf's 2 GB limit run, and no serialised copy of the
    weights is made (outputs identical to a session built from the full serialisation).
    """
    stub, large = stubbed(model, floats=True, inline=subgraph_reads(model.graph))
    if outputs is not None:
        del stub.graph.output[:]
        stub.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in outputs)
        del stub.graph.value_info[:]
    return _start(stub, large, threads=threads, optimize=optimize, values=values, shared=shared, prepack=prepack)


def segment_session(
    model: onnx.ModelProto,
    outputs: Iterable[str],
    *,
    cut: Mapping[str, np.dtype[Any]],
    dtypes: Mapping[str, np.dtype[Any]],
    shared: Mapping[str, np.ndarray] | None = None,
    overridable: Sequence[str] = (),
) -> ort.InferenceSession:
    """A session of :func:`with_outputs` ``(model, outputs, cut=cut, dtypes=dtypes)`` (``shared``: :func:`session`)
    whose constants ``overridable`` are also graph inputs (:func:`overridable_inputs`).

    The model is stubbed before it is cut, so the segment's weights are never copied into another protobuf,
    and only the weights the segment reads are handed to the session."""
    stub, large = stubbed(model, floats=True, inline=subgraph_reads(model.graph))
    seg = with_outputs(stub, outputs, cut=cut, dtypes=dtypes)
    if overridable:
        seg = overridable_inputs(seg, overridable)
    needed = {t.name for t in seg.graph.initializer}
    return _start(seg, [t for t in large if t.name in needed], shared=shared)


def constant_tensors(g: onnx.GraphProto, names: Collection[str]) -> dict[str, onnx.TensorProto]:
    """The tensors of the constants ``names`` of ``g``: initializers, or the ``value`` of ``Constant`` nodes."""
    found = {t.name: t for t in g.initializer if t.name in names}
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] in names and n.output[0] not in found:
            found[n.output[0]] = next(a.t for a in n.attribute if a.name == "value")
    return found


def overridable_inputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """``model`` with the constants ``names`` (initializers or ``Constant`` outputs) as graph inputs whose
    stored values are defaults, so that a run may feed others."""
    g = model.graph
    tensors = constant_tensors(g, names)
    inits = {t.name for t in g.initializer}
    for name, value in tensors.items():
        if name not in inits:  # a Constant node's value becomes an initializer
            t = g.initializer.add()
            t.CopyFrom(value)
            t.name = name
            tensors[name] = t  # the node (and its value) goes below
    remove_where(g.node, lambda n: n.op_type == "Constant" and n.output[0] in tensors and n.output[0] not in inits)
    have = {i.name for i in g.input}
    for name in names:
        if name in tensors and name not in have:
            t = tensors[name]
            g.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return model


def _start(
    stub: onnx.ModelProto,
    large: list[onnx.TensorProto],
    *,
    threads: int = 0,
    optimize: bool = True,
    values: bool = True,
    shared: Mapping[str, np.ndarray] | None = None,
    prepack: bool = True,
) -> ort.InferenceSession:
    """The session of ``stub`` (:func:`onnx_poem.external.stubbed`) with the values of its stubs ``large``.

    [R, memory] The weights that only :data:`IN_PLACE_READERS` read are given with
    ``SessionOptions.add_initializer``, which onnxruntime uses in place on the CPU
    (``add_external_initializers`` copies them: a BERT-base session held 0.85 GB of weights where the arrays
    are 0.43 GB).  That call overrides initializers the model has, so their stubs stay external-data
    references, to a file that exists (sparse, empty) beside the stub model while the session is made.
    onnxruntime's basic and extended optimisations read the overriding values, but its layout transformation
    (NCHWc, ``ORT_ENABLE_ALL``) read the file's zeros instead (a CIFAR ResNet-20's outputs were wrong), so the
    weights of every other op are copied as before.  Prepacking stays on: a BERT-base session's prepacked
    MatMul weights take 0.32 GB, but a run with prepacking off peaked no lower (2969 against 2902 MB).
    """
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads or ort_threads()
    if not optimize or not values:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # idle onnxruntime workers must not spin: BLAS runs on the same cores between the runs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    use_shared_arena(so)  # one arena for all sessions, emptied between the stages (:mod:`onnx_poem.arena`)
    if not values or not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    providers = device_providers(values=values)  # --device (:mod:`onnx_poem.device`); shapes on the CPU
    if values and deterministic():
        so.use_deterministic_compute = True
    if not large:
        return _open(stub.SerializeToString(), so, providers, values=values)
    arrays = [np.ascontiguousarray(a) for a in stub_values(large, values=values, shared=shared)]
    held = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    in_place = _in_place(stub) if weights_in_place() else set()  # :func:`onnx_poem.device.weights_in_place`
    copied = [(t.name, v) for t, v in zip(large, held, strict=True) if t.name not in in_place]
    if copied:
        so.add_external_initializers([n for n, _ in copied], [v for _, v in copied])
    shared_here = [(t.name, v, a.nbytes) for t, v, a in zip(large, held, arrays, strict=True) if t.name in in_place]
    if not shared_here:
        return _open(stub.SerializeToString(), so, providers, values=values)
    for name, v, _ in shared_here:
        so.add_initializer(name, v)
    with tempfile.TemporaryDirectory(prefix="onnx-poem-session-") as d:
        with open(os.path.join(d, STUB_LOCATION), "wb") as fh:
            fh.truncate(max(n for _, _, n in shared_here))
        path = os.path.join(d, "model.onnx")
        with open(path, "wb") as fh:
            fh.write(stub.SerializeToString())
        sess = _open(path, so, providers, values=values)
    sess._poem_weights = (arrays, held)  # type: ignore[attr-defined]  # onnxruntime reads them in place
    return sess


def _open(source: str | bytes, so: ort.SessionOptions, providers: list[Any], *, values: bool) -> ort.InferenceSession:
    """The session of ``source`` (a serialised model or its path), checked to run on the device asked for
    (:func:`onnx_poem.device.check_started`)."""
    try:
        sess = ort.InferenceSession(source, so, providers=providers)
    except Exception as e:  # onnxruntime's errors have no public classes to catch
        found = re.search(r"Unsupported model IR version: \d+, max supported IR version: \d+", str(e))
        if found is None:
            raise
        raise ModelError(
            f"onnxruntime {ort.__version__} cannot run this model ({found.group(0)}): install a newer onnxruntime, "
            "or save the model at that IR version if its operators allow it"
        ) from e
    check_started(sess.get_providers(), values=values)
    return sess


#: ops whose weights onnxruntime's CPU optimisations never re-lay out from the model's own initializers
#: (:func:`_start` hands those to a session in place)
IN_PLACE_READERS = frozenset({"MatMul", "Gemm", "Gather"})


def _in_place(stub: onnx.ModelProto) -> set[str]:
    """The initializers of ``stub`` that only :data:`IN_PLACE_READERS` read (in its main graph)."""
    readers: dict[str, set[str]] = {}
    for n in stub.graph.node:
        for t in n.input:
            readers.setdefault(t, set()).add(n.op_type)
    captured = subgraph_reads(stub.graph)  # read inside a subgraph too
    return {
        t.name
        for t in stub.graph.initializer
        if t.name in readers and t.name not in captured and readers[t.name] <= IN_PLACE_READERS
    }


def with_outputs(
    model: onnx.ModelProto,
    names: Iterable[str],
    *,
    cut: Mapping[str, np.dtype[Any]] | None = None,
    dtypes: Mapping[str, np.dtype[Any]] | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` cut down to the nodes needed for tensors ``names``, which become its outputs.

    The returned model's outputs are exactly ``names`` (in order); nodes that do
    not contribute to them are dropped, so onnxruntime computes only the prefix.
    ``cut`` (tensor name → dtype) turns intermediate tensors into extra graph inputs
    (shape left open): the nodes that produced them are dropped too, so only the
    segment after the cut runs. Graph inputs no node needs any more are removed.
    New outputs are declared with their element type from ``dtypes`` (e.g.
    :attr:`GraphView.dtypes`), else from shape inference of ``model``.
    """
    wanted = list(dict.fromkeys(names))
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    for n, dtype in (cut or {}).items():
        t = tensors.get(n)
        if not isinstance(t, gs.Variable):
            raise ModelError(f"cut tensor {n!r} not found in the graph")
        t.inputs.clear()
        t.dtype, t.shape = dtype, None
        graph.inputs.append(t)
    outs = []
    for n in wanted:
        if n not in tensors:
            raise ModelError(f"tensor {n!r} not found in the graph")
        t = tensors[n]
        if isinstance(t, gs.Variable) and t.dtype is None:
            if dtypes is None or n not in dtypes:
                dtypes = {**(dtypes or {}), **infer_shapes(model, {})[1]}
            t.dtype = dtypes.get(n, np.dtype(np.float32))
        outs.append(t)
    graph.outputs = outs
    graph.cleanup(remove_unused_graph_inputs=cut is not None)
    sub = gs.export_onnx(graph, do_type_check=False)
    # exporters may leave traced (batch-1) shapes in value_info: keep the declared inputs, drop the rest
    declared = {vi.name: vi for vi in model.graph.input}
    for vi in sub.graph.input:
        if vi.name in declared:
            vi.CopyFrom(declared[vi.name])
    del sub.graph.value_info[:]
    sub.ir_version = model.ir_version
    del sub.opset_import[:]
    sub.opset_import.extend(model.opset_import)
    return sub


def release_segments() -> None:
    """Free the graphs :func:`with_outputs` imported (call once per group).

    [R, memory] An imported graph is a web of reference cycles (nodes, tensors and their
    synchronised lists) whose constants refer to the source model's tensors, and any one of those
    keeps that whole model alive.  Left to the cycle collector's own schedule, a copy of the
    current model per group piled up: a 0.2 GB MLP peaked at 2.0 GB instead of 1.2 GB, a 2.5 GB
    one passed 11 GB.  One full collection per group costs milliseconds.  Then :func:`trim_heap`.
    """
    gc.collect()
    release_arena()
    trim_heap()


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``; nothing elsewhere).

    [R, memory] Protobuf copies and onnxruntime sessions free their memory in many small blocks that glibc
    keeps for reuse: after shape folding BERT-base (a session of the model, a copy of it, both released) the
    process held 1.29 GB more than the model as loaded, 0.11 GB after a trim.  Every later stage then
    started from that plateau.  A trim walks the heap once (milliseconds).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    """glibc through ctypes, or ``None`` (another C library, another system)."""
    try:
        import ctypes

        lib = ctypes.CDLL("libc.so.6")
        return lib if hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _libc()


def dtype_of(model: onnx.ModelProto, name: str) -> np.dtype[Any] | None:
    """NumPy dtype of graph input ``name``."""
    for vi in model.graph.input:
        if vi.name == name:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return None


def opset_of(model: onnx.ModelProto) -> int:
    """``model``'s default-domain opset version (13 where none is declared)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def declared_shape(model: onnx.ModelProto, name: str) -> tuple[int | str | None, ...]:
    """Declared shape of graph input ``name``: ints, symbolic names, or ``None``."""
    for vi in model.graph.input:
        if vi.name == name:
            dims = vi.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)
    raise ModelError(f"model has no input {name!r}")
