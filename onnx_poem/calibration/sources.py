"""Calibration inputs: ``.npz`` / ``.npy`` files, image folders, synthetic data.

Every source is validated against the model's inputs (names, ranks, fixed
dimensions, dtypes, finiteness) and presented as a :class:`CalibrationData`:
a mapping input name → array of ``N`` samples along axis 0.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import CalibrationError, UsageError
from ..graph import declared_shape, dtype_of
from . import store
from .store import Array, all_finite, open_npy, open_npz, spill

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageOptions:
    """How an image folder becomes model input.

    ``pixel · scale`` is normalised per channel by ``(v - mean) / std``;
    ``size`` is (H, W) after resizing, ``layout`` ``NCHW`` or ``NHWC``.
    ``None`` fields are taken from the model's input shape.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1.0 / 255.0
    layout: str | None = None


@dataclass(frozen=True)
class CalibrationData:
    """Validated calibration samples.

    Attributes:
        arrays: input name → array with the samples on axis 0.
        scalars: inputs fed as they are with every batch: 0-d model inputs (an audio model's sample
            rate) and inputs given with exactly their fully static declared shape (a recurrent state
            ``(1, 1, 128)`` beside per-sample inputs).
        synthetic: the samples are synthetic, not real data.
        labels: ``(N,)`` integer class labels, when the source has them (verification data).
        axes: input name → the model's batch axis of that input where it is not 0 (a recurrent state
            declared ``[2, batch, 128]``); its array holds the samples on axis 0 all the same.
    """

    arrays: Mapping[str, Array]
    synthetic: bool = False
    scalars: Mapping[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    axes: Mapping[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def feed(self, indices: Sequence[int] | np.ndarray, names: Container[str] | None = None) -> dict[str, np.ndarray]:
        """One onnxruntime feed of the samples ``indices`` (scalar and fixed inputs as they are); only the
        per-sample inputs in ``names`` when given."""
        sel = np.asarray(indices, dtype=np.int64)
        return {
            **{
                k: np.ascontiguousarray(np.moveaxis(v[sel], 0, self.axes.get(k, 0)))
                for k, v in self.arrays.items()
                if names is None or k in names
            },
            **self.scalars,
        }

    def batches(self, indices: Sequence[int] | np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for onnxruntime, ``batch_size`` samples at a time, in the order of ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(idx), batch_size):
            yield self.feed(idx[start : start + batch_size])

    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one sample per input, with a batch of 1 (scalar and fixed inputs: their shape)."""
        shapes = {}
        for k, v in self.arrays.items():
            dims = list(v.shape[1:])
            dims.insert(self.axes.get(k, 0), 1)
            shapes[k] = tuple(dims)
        return {**shapes, **{k: tuple(v.shape) for k, v in self.scalars.items()}}


def model_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def load_calibration(
    model: onnx.ModelProto,
    source: str | Path | Mapping[str, np.ndarray] | np.ndarray | None,
    *,
    samples: int,
    seed: int,
    image_options: ImageOptions | None = None,
    synthetic: bool = False,
) -> CalibrationData:
    """Read ``source`` and validate it against ``model``'s inputs.

    Args:
        model: the model to calibrate.
        source: a ``.npz``/``.npy`` path, an image directory (optionally one sub-folder per class,
            which gives labels), arrays (an array named ``labels`` gives labels), or ``None``.
        samples: use at most this many samples (the first ones).
        seed: seed of the synthetic data.
        image_options: preprocessing of an image directory.
        synthetic: with ``source=None``, use synthetic inputs instead of refusing.

    Raises:
        UsageError: no ``source`` and ``synthetic`` is false.
        CalibrationError: unreadable source, names/shapes/dtypes that do not match, NaN or Inf.
    """
    if samples < 1:
        raise UsageError(f"samples must be >= 1, got {samples}")
    names = model_inputs(model)
    if source is None:
        if not synthetic:
            raise UsageError(NO_DATA)
        return CalibrationData(_synthetic(model, names, samples, seed), synthetic=True)
    if isinstance(source, np.ndarray):
        raw: dict[str, Array] = {"": source}
    elif isinstance(source, Mapping):
        raw = {str(k): np.asarray(v) for k, v in source.items()}
    else:
        raw = _read_path(Path(source), model, names, samples, image_options or ImageOptions())
    labels = np.asarray(raw.pop(LABELS)) if LABELS in raw and LABELS not in names else None
    arrays = _match_names(raw, names)
    axes = {k: a for k in arrays if (a := _batch_axis(model, k, names)) and arrays[k].ndim > a}
    candidates = {k for k, v in arrays.items() if _rank(model, k) != 0 and _static_as_declared(model, k, v)}
    counts = {c for k, v in arrays.items() if k not in candidates and v.ndim for c in [v.shape[axes.get(k, 0)]]}
    scalars = {  # fed whole with every batch: in memory
        k: np.asarray(v)
        for k, v in arrays.items()
        if _rank(model, k) == 0 or (k in candidates and counts and v.shape[0] not in counts)
    }
    axes = {k: a for k, a in axes.items() if k not in scalars}
    arrays = {
        k: _samples_first(v, axes.get(k, 0))[:samples] if v.ndim else v for k, v in arrays.items() if k not in scalars
    }
    _validate(model, arrays, scalars, axes)
    if labels is not None:
        labels = _labels(labels, len(next(iter(arrays.values()))), samples)
    return CalibrationData(arrays, scalars=scalars, labels=labels, axes=axes)


def _batch_symbols(model: onnx.ModelProto, names: list[str]) -> set[str]:
    """The symbolic first dims of the inputs (``batch``, ``N``): the names a batch axis goes by."""
    out = set()
    for name in names:
        for vi in model.graph.input:
            if vi.name == name and vi.type.tensor_type.HasField("shape") and vi.type.tensor_type.shape.dim:
                d = vi.type.tensor_type.shape.dim[0]
                if d.HasField("dim_param") and d.dim_param:
                    out.add(d.dim_param)
    return out


def _batch_axis(model: onnx.ModelProto, name: str, names: list[str]) -> int:
    """The batch axis of input ``name``: where it declares a batch symbol of the other inputs after a fixed
    first dim (a recurrent state ``[2, batch, 128]``); 0 otherwise."""
    symbols = _batch_symbols(model, names)
    for vi in model.graph.input:
        if vi.name != name or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value"):
            return 0
        for i, d in enumerate(dims):
            if i and d.HasField("dim_param") and d.dim_param in symbols:
                return i
    return 0


#: the array (npz key) that holds class labels
LABELS = "labels"

NO_DATA = (
    "no calibration data: pass --calib with 256-1024 real samples (a folder of images, or an .npz "
    "with one array per model input); pruning on synthetic inputs wrecks accuracy (measured at half "
    "the MACs: CIFAR ResNet-20 23.2 % top-1 on noise vs 72.7 % on 512 real images, original 81.0 %; "
    "EfficientNet-Lite0 0.8 vs 44.4 %), add --synthetic to do it anyway"
)


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    """Declared rank of input ``name`` (``None`` when the model declares no shape)."""
    for vi in model.graph.input:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def _labels(labels: np.ndarray, n: int, samples: int) -> np.ndarray:
    labels = np.asarray(labels)[:samples]
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != n:
        raise CalibrationError(f"labels must be {n} integers (one per sample), got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _samples_first(v: Array, axis: int) -> Array:
    """``v`` with its batch axis ``axis`` moved first (a file-backed array is read into memory for that)."""
    if axis == 0:
        return v
    return np.moveaxis(np.asarray(v), axis, 0)


def _read_path(
    path: Path, model: onnx.ModelProto, names: list[str], samples: int, opts: ImageOptions
) -> dict[str, Array]:
    if not path.exists():
        raise CalibrationError(f"calibration data not found: {path}")
    if path.is_dir():
        if len(names) != 1:
            raise CalibrationError("an image folder can only calibrate a single-input model")
        x, labels = _read_images(path, model, names[0], samples, opts)
        return {names[0]: x} | ({LABELS: labels} if labels is not None else {})
    if path.suffix not in (".npz", ".npy"):
        raise CalibrationError(f"unsupported calibration file {path} (expected .npz, .npy or an image folder)")
    with open(path, "rb") as f:
        head = f.read(6)
    if path.suffix == ".npz" and not zipfile.is_zipfile(path):
        raise CalibrationError(f"{path} is not an .npz archive (not a zip file; save it with numpy.savez)")
    if path.suffix == ".npy" and head != b"\x93NUMPY":
        raise CalibrationError(f"{path} is not an .npy file (no NumPy header; save it with numpy.save)")
    try:  # large uncompressed arrays stay in the file, read batch by batch (calibration.store)
        if path.suffix == ".npz":
            on_disk = open_npz(path)
            with np.load(path, allow_pickle=False) as z:
                return {k: on_disk[k] if k in on_disk else z[k] for k in z.files}
        return {"": open_npy(path) or np.load(path, allow_pickle=False)}
    except Exception as e:
        raise CalibrationError(f"cannot read calibration file {path}: {e}") from e


def _match_names(raw: dict[str, Array], names: list[str]) -> dict[str, Array]:
    if not raw:
        raise CalibrationError("calibration data holds no arrays")
    if set(names) <= set(raw):
        extra = sorted(set(raw) - set(names))
        if extra:
            logger.warning("ignoring calibration arrays that are not model inputs: %s", ", ".join(extra))
        return {n: raw[n] for n in names}
    if len(names) == 1 and len(raw) == 1:
        return {names[0]: next(iter(raw.values()))}
    missing = sorted(set(names) - set(raw))
    raise CalibrationError(
        f"calibration data lacks model input(s) {', '.join(missing)} (has {', '.join(sorted(raw)) or 'none'})"
    )


def _static_as_declared(model: onnx.ModelProto, name: str, value: Array) -> bool:
    """Input ``name`` declares a fully static shape and ``value`` has exactly it: given once, it is fed as it
    is with every batch when the per-sample inputs hold another number of samples (a recurrent state
    ``(1, 1, 128)``)."""
    want = declared_shape(model, name)
    return bool(want) and all(isinstance(d, int) and d > 0 for d in want) and tuple(value.shape) == tuple(want)


def _validate(
    model: onnx.ModelProto, arrays: dict[str, Array], scalars: dict[str, np.ndarray], axes: Mapping[str, int]
) -> None:
    for name, v in scalars.items():
        if v.ndim != 0 and _rank(model, name) == 0:
            raise CalibrationError(
                f"model input {name!r} is a scalar: give one 0-d value (fed with every batch), got shape {v.shape}"
            )
    if not arrays:
        raise CalibrationError("the model has only scalar inputs: there is nothing to calibrate on")
    for name, arr in arrays.items():
        if arr.ndim == 0:
            raise CalibrationError(
                f"calibration input {name!r} is a single value (0-d); the model expects "
                f"{_fmt(declared_shape(model, name))} with samples on axis 0"
            )
    counts = {v.shape[0] for v in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError("calibration arrays must all hold the same number (>= 1) of samples")
    for name, arr in {**arrays, **scalars}.items():
        want = declared_shape(model, name)
        if name in axes:  # compared with the samples on axis 0, as they are held
            want = (want[axes[name]], *want[: axes[name]], *want[axes[name] + 1 :])
        if _rank(model, name) is not None and arr.ndim != len(want):
            raise CalibrationError(
                f"calibration input {name!r} has shape {arr.shape}, model expects rank {len(want)} {_fmt(want)}"
            )
        for i, (have, w) in enumerate(zip(arr.shape, want, strict=False)):
            if i > 0 and isinstance(w, int) and w > 0 and have != w:
                raise CalibrationError(f"calibration input {name!r} has shape {arr.shape}, model expects {_fmt(want)}")
        dt = dtype_of(model, name)
        if dt is not None and arr.dtype != dt:
            raise CalibrationError(
                f"calibration input {name!r} has dtype {arr.dtype}, model expects {dt} (convert it first)"
            )
        if arr.dtype.kind == "f" and not all_finite(arr):
            raise CalibrationError(f"calibration input {name!r} holds NaN or Inf values")


def _fmt(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("?" if d in (None, 0) else str(d) for d in shape) + "]"


def _synthetic(model: onnx.ModelProto, names: list[str], samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        dt = dtype_of(model, name)
        shape = declared_shape(model, name)
        if dt is None or dt.kind != "f":
            raise CalibrationError(f"input {name!r} is not floating point: synthetic data needs --calib")
        dims = [d for d in shape[1:] if isinstance(d, int) and d > 0]
        if len(dims) != len(shape) - 1:
            raise CalibrationError(f"input {name!r} has dynamic dimensions {_fmt(shape)}: pass --calib")
        out[name] = rng.standard_normal((samples, *dims)).astype(dt)
    logger.warning("no calibration data: using synthetic standard-normal inputs; real data gives far better results")
    return out


def _image_files(path: Path, samples: int) -> tuple[list[Path], np.ndarray | None]:
    """Image files of ``path`` sorted by name, or of its sub-folders (one per class, sorted: labels 0, 1, ...).

    With class sub-folders the first ``samples`` images are taken round-robin over the classes,
    so a small ``samples`` still sees every class.
    """
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if files:
        return files[:samples], None
    classes = sorted(p for p in path.iterdir() if p.is_dir())
    per_class = [sorted(f for f in c.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES) for c in classes]
    chosen: list[tuple[Path, int]] = []
    for rank in range(max((len(fs) for fs in per_class), default=0)):
        chosen += [(fs[rank], label) for label, fs in enumerate(per_class) if rank < len(fs)]
    chosen = chosen[:samples]
    return [f for f, _ in chosen], (np.array([lab for _, lab in chosen], dtype=np.int64) if chosen else None)


#: images decoded at a time
IMAGE_CHUNK = 256


def _read_images(
    path: Path, model: onnx.ModelProto, name: str, samples: int, opts: ImageOptions
) -> tuple[Array, np.ndarray | None]:
    from PIL import Image

    files, labels = _image_files(path, samples)
    if not files:
        raise CalibrationError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path} or its sub-folders")
    shape = declared_shape(model, name)
    if len(shape) != 4:
        raise CalibrationError(f"input {name!r} of shape {_fmt(shape)} does not take images")
    layout = opts.layout or ("NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"layout must be NCHW or NHWC, got {layout!r}")
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    if isinstance(c, int) and c not in (1, 3):
        raise CalibrationError(
            f"input {name!r} {_fmt(shape)} read as {layout} has {c} channels; images give 1 or 3"
            + (" (check --layout)" if opts.layout else "")
        )
    if not (np.isfinite(opts.scale) and opts.scale != 0):
        raise UsageError(f"--scale must be a finite non-zero number, got {opts.scale}")
    if not (np.isfinite(opts.mean).all() and np.isfinite(opts.std).all()):
        raise UsageError("--mean and --std must be finite numbers")
    size = opts.size
    if size is not None and (isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0) and tuple(size) != (h, w):
        raise CalibrationError(f"--input-size {size[0]}x{size[1]}: input {name!r} {_fmt(shape)} takes {h}x{w} images")
    if size is None:
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise CalibrationError(f"input {name!r} has no fixed image size: pass --input-size")
        size = (h, w)
    channels = c if isinstance(c, int) and c > 0 else 3
    mean = np.asarray(opts.mean, dtype=np.float32).reshape(-1)
    std = np.asarray(opts.std, dtype=np.float32).reshape(-1)
    for what, v in (("mean", mean), ("std", std)):
        if v.size not in (1, channels):
            raise UsageError(
                f"--{what} has {v.size} values; input {name!r} has {channels} channel{'s' if channels > 1 else ''}: "
                f"give {'1 value' if channels == 1 else f'1 or {channels} values'}"
            )
    if (std == 0).any():
        raise UsageError("std must not be 0")
    dt = dtype_of(model, name) or np.dtype(np.float32)
    hwc = (int(size[0]), int(size[1]), channels)

    def decoded(chunk: list[Path]) -> np.ndarray:
        out = np.empty((len(chunk), *hwc), dtype=np.float32)
        for i, f in enumerate(chunk):
            try:
                with Image.open(f) as im:
                    rgb = im.convert("L" if channels == 1 else "RGB")
                    im = rgb.resize((hwc[1], hwc[0]), Image.Resampling.BILINEAR)
                    arr = np.asarray(im, dtype=np.float32)
            except Exception as e:
                raise CalibrationError(f"cannot read image {f}: {e}") from e
            out[i] = arr.reshape(hwc) * opts.scale
        out = (out - mean) / std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2) if layout == "NCHW" else out).astype(dt)

    chunks = (decoded(files[s : s + IMAGE_CHUNK]) for s in range(0, len(files), IMAGE_CHUNK))
    shape = (len(files), *((hwc[2], hwc[0], hwc[1]) if layout == "NCHW" else hwc))
    if len(files) * int(np.prod(shape[1:])) * dt.itemsize >= store.MIN_BYTES:  # decoded once, then read per batch
        return spill(chunks, shape, dt), labels
    return np.concatenate(list(chunks)), labels
