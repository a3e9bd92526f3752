"""Weights outside the protobuf: models past the 2 GB limit, sessions, files with external data.

A serialised ``ModelProto`` cannot exceed 2 GB (protobuf's limit), yet an
in-memory one can hold every weight of a larger model (``onnx.load`` reads its
external data into the tensors).  Nothing here serialises the weights:

* :func:`stub_weights` replaces every large initializer by an external-data stub
  and returns the arrays, so :func:`onnx_poem.graph.session` hands them to
  onnxruntime directly (``add_external_initializers``; onnxruntime copies them in
  before any graph optimisation, so outputs are bit-identical to a session built
  from the full serialisation, which is never made);
* :func:`encode` gives the bytes of a model file and, with ``external``, of its
  ``<name>.data`` file (tensors of at least :data:`EXTERNAL_MIN_BYTES` there, in
  initializer order, offsets 4 KiB-aligned: ``onnx.load`` and onnxruntime read it);
* :func:`weights_digest` hashes a model of any size deterministically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

#: a serialised model must stay below this (protobuf's hard limit is 2 GiB - 1; some headroom)
PROTO_LIMIT = 2_000_000_000
#: initializers with at least this many bytes go to the ``.data`` file / are fed to sessions directly
EXTERNAL_MIN_BYTES = 1024
#: initializers with at least this many bytes are handed to onnxruntime sessions as arrays
SESSION_MIN_BYTES = 64 * 1024
#: offsets in the ``.data`` file are multiples of this
ALIGN = 4096
#: the data file name stubs carry (:func:`onnx_poem.graph.session` gives the values as arrays; the file beside
#: the stub is empty, and onnxruntime never reads it)
STUB_LOCATION = "onnx-poem-memory"


def data_path(model_path: Path) -> Path:
    """Where :func:`encode` puts the external data of ``model_path``."""
    return model_path.with_name(model_path.name + ".data")


def too_big(model: onnx.ModelProto) -> bool:
    """``model`` cannot be serialised as one protobuf: its tensors' data alone (initializers and
    ``Constant`` values of the main graph) come within the graph's headroom of the limit.

    (``ModelProto.ByteSize`` would serialise the model to measure it, and fails past the limit.)"""
    return stored_bytes(model) >= PROTO_LIMIT


def stored_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data ``model``'s protobuf holds (initializers and ``Constant`` values of the main graph;
    typed fields counted at 8 bytes an element), without serialising it."""
    total = sum(_data_bytes(t) for t in model.graph.initializer)
    for n in model.graph.node:
        total += sum(_data_bytes(a.t) for a in n.attribute if a.HasField("t"))
    return total


def _data_bytes(t: onnx.TensorProto) -> int:
    """Bytes of ``t``'s data held in the protobuf (none when external)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return 0
    if t.HasField("raw_data"):
        return len(t.raw_data) if t.data_type not in _PLAIN else shape_nbytes(t)
    return _elements(t) * 8  # typed fields: at most 8 bytes per element


def _elements(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if len(t.dims) else 1


def shape_nbytes(t: onnx.TensorProto) -> int:
    """Bytes the data of ``t`` (a numeric or bool tensor) takes by its type and shape.

    Read from the shape, not ``len(t.raw_data)``: each read of ``raw_data`` copies the bytes."""
    return _elements(t) * int(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)


def _large(t: onnx.TensorProto, min_bytes: int) -> bool:
    return t.data_type in _PLAIN and t.HasField("raw_data") and shape_nbytes(t) >= min_bytes


#: element types whose NumPy array (``numpy_helper.to_array``) has exactly the tensor's type and bytes
#: (bfloat16 and the float8 types are left in the protobuf)
_PLAIN = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}


def _set_external(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def stub_of(name: str, data_type: int, dims: Iterable[int]) -> onnx.TensorProto:
    """An external-data stub for an initializer ``name`` of that type and shape (see :func:`stubbed`)."""
    s = onnx.TensorProto()
    s.name, s.data_type = name, data_type
    s.dims.extend(dims)
    _set_external(s, STUB_LOCATION, 0, shape_nbytes(s))
    return s


def is_stub(t: onnx.TensorProto) -> bool:
    """``t`` is a stub made here (its value lives in an array, not in a file)."""
    return t.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == STUB_LOCATION for e in t.external_data
    )


def copy_except(dst: object, src: object, skip: str) -> None:
    """Copy every set field of message ``src`` except ``skip`` into ``dst`` (same message type)."""
    for f, value in src.ListFields():  # type: ignore[attr-defined]
        if f.name == skip:
            continue
        if f.is_repeated:
            getattr(dst, f.name).extend(value)
        elif f.message_type is not None:
            getattr(dst, f.name).CopyFrom(value)
        else:
            setattr(dst, f.name, value)


def remove_where(items: Any, drop: Callable[[Any], bool]) -> None:
    """Delete the elements of repeated protobuf field ``items`` for which ``drop`` is true, in place.

    [R, memory] Not ``kept = [...]; del items[:]; items.extend(kept)``: protobuf (upb) frees no element's
    memory before the whole message goes, so that rebuild kept every tensor twice.  Constant folding rebuilt
    the initializers twice so: BERT-base's folded model held 1.26 GB of memory for 0.41 GB of tensors.
    """
    for i in reversed(range(len(items))):
        if drop(items[i]):
            del items[i]


def stub_weights(
    model: onnx.ModelProto,
    min_bytes: int | None = None,
    *,
    values: bool = True,
    shared: Mapping[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, list[str], list[np.ndarray]]:
    """A copy of ``model`` whose main-graph initializers of at least ``min_bytes`` (default
    :data:`SESSION_MIN_BYTES`) are external-data stubs, with their names and values (``(names, arrays)``
    in initializer order).

    The copy is made without copying those weights into another protobuf.  ``values=False``: floating-point
    weights come as zeros (``np.zeros``: pages the process never writes, so no memory until touched, and a
    read maps the kernel's zero page), for a run whose outputs' shapes alone are wanted.  ``shared``: arrays
    known to hold the values of the initializers of those names (a :class:`WeightPool` of the model this one
    was copied from), used instead of converting them again."""
    stub, large = stubbed(model, min_bytes)
    return stub, [t.name for t in large], stub_values(large, values=values, shared=shared)


def stub_values(
    large: Iterable[onnx.TensorProto], *, values: bool = True, shared: Mapping[str, np.ndarray] | None = None
) -> list[np.ndarray]:
    """The arrays of the initializers :func:`stubbed` took out (``values`` and ``shared``: :func:`stub_weights`).

    Raises:
        KeyError: a tensor that was a stub already (:func:`is_stub`) has no value in ``shared``.
    """
    large = list(large)
    missing = [t.name for t in large if is_stub(t) and (shared is None or t.name not in shared)]
    if missing:
        raise KeyError(f"no value for the stubbed initializers {missing[:3]}")
    return [
        shared[t.name]
        if shared is not None and t.name in shared
        else numpy_helper.to_array(t)
        if values or t.data_type not in FLOAT_TYPES
        else np.zeros(tuple(t.dims), onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        for t in large
    ]


class WeightPool(Mapping[str, np.ndarray]):
    """The arrays of one model's floating-point initializers of at least :data:`SESSION_MIN_BYTES`, each
    converted from the protobuf on first use and then handed to every session of that model (or of a copy
    whose tensors of those names are unchanged: :meth:`excluding`).

    [R, memory] Each onnxruntime session used to get its own arrays of the weights (and onnxruntime a copy of
    those): the cascade's two streams held four copies of BERT-base's weights besides the models themselves.
    With one pool and sessions that use the arrays in place (:func:`onnx_poem.graph.session`) they hold none.
    The arrays are read-only: a caller that changes one must copy it first.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._tensors = {
            t.name: t for t in model.graph.initializer if _large(t, SESSION_MIN_BYTES) and t.data_type in FLOAT_TYPES
        }
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        a = self._arrays.get(name)
        if a is None:
            a = numpy_helper.to_array(self._tensors[name])
            a.flags.writeable = False
            self._arrays[name] = a
        return a

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def excluding(self, names: Iterable[str]) -> Mapping[str, np.ndarray]:
        """The pool without ``names`` (tensors a copy of the model changed)."""
        return _Excluding(self, frozenset(names))

    def release(self) -> None:
        """Drop the converted arrays (sessions still holding some keep those alive); later uses convert again."""
        self._arrays.clear()


class _Excluding(Mapping[str, np.ndarray]):
    """:meth:`WeightPool.excluding`: a pool less some names (converted lazily, like the pool)."""

    def __init__(self, pool: WeightPool, drop: frozenset[str]) -> None:
        self._pool, self._drop = pool, drop

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._drop:
            raise KeyError(name)
        return self._pool[name]

    def __iter__(self) -> Iterator[str]:
        return (n for n in self._pool if n not in self._drop)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        return name not in self._drop and name in self._pool


class Overlay(Mapping[str, np.ndarray]):
    """``top``'s arrays, then ``base``'s for the names ``top`` lacks (read-only; a session's shared arrays)."""

    def __init__(self, top: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> None:
        self._top, self._base = top, base

    def __getitem__(self, name: str) -> np.ndarray:
        return self._top[name] if name in self._top else self._base[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._top
        yield from (n for n in self._base if n not in self._top)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        return name in self._top or name in self._base


def stubbed(
    model: onnx.ModelProto, min_bytes: int | None = None, *, floats: bool = False, inline: Collection[str] = ()
) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """:func:`stub_weights`' copy of ``model`` and the large initializers themselves (not converted); every stub
    refers to offset 0 of :data:`STUB_LOCATION` with its own length.  ``floats``: floating-point tensors only
    (an integer one may be a shape, a pad or a slice bound that onnxruntime reads while it loads the model).
    ``inline``: names kept in the copy whatever their size (a session's weights read inside an If/Loop body:
    onnxruntime resolves those from the model's own initializer, not from a value the session is given)."""
    stub = onnx.ModelProto()
    copy_except(stub, model, skip="graph")
    copy_except(stub.graph, model.graph, skip="initializer")
    min_bytes = SESSION_MIN_BYTES if min_bytes is None else min_bytes
    large: list[onnx.TensorProto] = []
    for t in model.graph.initializer:
        if is_stub(t):  # already a stub (a cascade model): its value comes from the session's shared arrays
            large.append(t)
            stub.graph.initializer.append(t)
            continue
        if not _large(t, min_bytes) or (floats and t.data_type not in FLOAT_TYPES) or t.name in inline:
            stub.graph.initializer.append(t)
            continue
        large.append(t)
        stub.graph.initializer.append(stub_of(t.name, t.data_type, t.dims))
    return stub, large


#: floating-point element types (weights whose values never decide a shape)
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def encode(model: onnx.ModelProto, path: Path, *, external: bool) -> dict[Path, Iterable[bytes]]:
    """The file(s) of ``model`` saved at ``path`` (path → chunks, for an atomic write of both).

    Without ``external`` one protobuf (deterministic serialisation).  With it the
    main graph's initializers of at least :data:`EXTERNAL_MIN_BYTES` go to
    :func:`data_path` ``(path)`` (same order, 4 KiB-aligned) and the model file refers to it
    by its name (relative, as ``onnx.save_model`` does); no data file when no tensor is that large.
    The data file's chunks are produced one tensor at a time as they are written (no second
    copy of the weights in memory).
    """
    if not external:
        return {path: [model.SerializeToString(deterministic=True)]}
    out = onnx.ModelProto()
    copy_except(out, model, "graph")
    copy_except(out.graph, model.graph, "initializer")
    location = data_path(path).name
    placed: list[tuple[onnx.TensorProto, int]] = []  # (source tensor, padding before it)
    offset = 0
    for t in model.graph.initializer:
        if not _large(t, EXTERNAL_MIN_BYTES):
            out.graph.initializer.append(t)
            continue
        pad = -offset % ALIGN
        length = shape_nbytes(t)
        s = out.graph.initializer.add()
        s.name, s.data_type = t.name, t.data_type
        s.dims.extend(t.dims)
        _set_external(s, location, offset + pad, length)
        placed.append((t, pad))
        offset += pad + length

    def chunks() -> Iterator[bytes]:
        for t, pad in placed:
            if pad:
                yield b"\0" * pad
            yield t.raw_data

    files: dict[Path, Iterable[bytes]] = {path: [out.SerializeToString(deterministic=True)]}
    if placed:  # no tensor large enough: no empty data file
        files[data_path(path)] = chunks()
    return files


def weights_digest(model: onnx.ModelProto) -> str:
    """SHA-256 of ``model``'s stubbed serialisation (:func:`stub_weights` at :data:`EXTERNAL_MIN_BYTES`)
    followed by the large initializers' bytes, one tensor at a time (deterministic).

    [R, memory] Never the whole model's serialisation: that was a transient copy of every weight, or two
    (protobuf's buffer and the bytes), at the end of every run: BERT-base's peak memory.  Plans saved before
    this digest carry :func:`legacy_digest` instead (``--apply-plan`` accepts either)."""
    h = hashlib.sha256()
    stub, large = stubbed(model, EXTERNAL_MIN_BYTES)
    h.update(stub.SerializeToString(deterministic=True))
    del stub
    for t in large:
        h.update(t.raw_data)  # the stored little-endian bytes: what ``to_array(t).tobytes()`` gave, one copy less
    return h.hexdigest()


def legacy_digest(model: onnx.ModelProto) -> str:
    """The digest of plans saved before :func:`weights_digest` streamed: the whole deterministic
    serialisation for a model under protobuf's limit (the stubbed form otherwise, as now)."""
    if too_big(model):
        return weights_digest(model)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
