"""Calibration inputs: ``.npz`` / ``.npy`` files, image folders, synthetic data.

Every source is validated against the model's inputs (names, ranks, fixed
dimensions, dtypes, finiteness) and presented as a :class:`CalibrationData`:
a mapping input name → array of ``N`` samples along axis 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import CalibrationError, UsageError
from ..graph import declared_shape, dtype_of

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
    """Validated calibration samples: ``arrays[name]`` has the samples on axis 0."""

    arrays: Mapping[str, np.ndarray]
    synthetic: bool = False

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, indices: Sequence[int] | np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for onnxruntime, ``batch_size`` samples at a time, in the order of ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(idx), batch_size):
            sel = idx[start : start + batch_size]
            yield {k: np.ascontiguousarray(v[sel]) for k, v in self.arrays.items()}

    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one sample per input, with a batch of 1."""
        return {k: (1, *v.shape[1:]) for k, v in self.arrays.items()}


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
) -> CalibrationData:
    """Read ``source`` and validate it against ``model``'s inputs.

    Args:
        model: the model to calibrate.
        source: a ``.npz``/``.npy`` path, an image directory, arrays, or ``None`` (synthetic data).
        samples: use at most this many samples (the first ones).
        seed: seed of the synthetic data.
        image_options: preprocessing of an image directory.

    Raises:
        CalibrationError: unreadable source, names/shapes/dtypes that do not match, NaN or Inf.
    """
    if samples < 1:
        raise UsageError(f"samples must be >= 1, got {samples}")
    names = model_inputs(model)
    if source is None:
        arrays = _synthetic(model, names, samples, seed)
        return CalibrationData(arrays, synthetic=True)
    if isinstance(source, np.ndarray):
        raw: dict[str, np.ndarray] = {"": source}
    elif isinstance(source, Mapping):
        raw = {str(k): np.asarray(v) for k, v in source.items()}
    else:
        raw = _read_path(Path(source), model, names, samples, image_options or ImageOptions())
    arrays = _match_names(raw, names)
    arrays = {k: v[:samples] for k, v in arrays.items()}
    _validate(model, arrays)
    return CalibrationData(arrays)


def _read_path(
    path: Path, model: onnx.ModelProto, names: list[str], samples: int, opts: ImageOptions
) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CalibrationError(f"calibration data not found: {path}")
    if path.is_dir():
        if len(names) != 1:
            raise CalibrationError("an image folder can only calibrate a single-input model")
        return {names[0]: _read_images(path, model, names[0], samples, opts)}
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
    except Exception as e:
        raise CalibrationError(f"cannot read calibration file {path}: {e}") from e
    raise CalibrationError(f"unsupported calibration file {path} (expected .npz, .npy or an image folder)")


def _match_names(raw: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
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


def _validate(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    counts = {v.shape[0] if v.ndim else 0 for v in arrays.values()}
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError("calibration arrays must all hold the same number (>= 1) of samples")
    for name, arr in arrays.items():
        want = declared_shape(model, name)
        if arr.ndim != len(want):
            raise CalibrationError(
                f"calibration input {name!r} has shape {arr.shape}, model expects rank {len(want)} {_fmt(want)}"
            )
        for i, (have, w) in enumerate(zip(arr.shape, want, strict=True)):
            if i > 0 and isinstance(w, int) and w > 0 and have != w:
                raise CalibrationError(f"calibration input {name!r} has shape {arr.shape}, model expects {_fmt(want)}")
        dt = dtype_of(model, name)
        if dt is not None and arr.dtype != dt:
            raise CalibrationError(
                f"calibration input {name!r} has dtype {arr.dtype}, model expects {dt} (convert it first)"
            )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
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


def _read_images(path: Path, model: onnx.ModelProto, name: str, samples: int, opts: ImageOptions) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:samples]
    if not files:
        raise CalibrationError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    shape = declared_shape(model, name)
    if len(shape) != 4:
        raise CalibrationError(f"input {name!r} of shape {_fmt(shape)} does not take images")
    layout = opts.layout or ("NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"layout must be NCHW or NHWC, got {layout!r}")
    c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    size = opts.size
    if size is None:
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise CalibrationError(f"input {name!r} has no fixed image size: pass --input-size")
        size = (h, w)
    channels = c if isinstance(c, int) and c > 0 else 3
    mean = np.asarray(opts.mean, dtype=np.float32).reshape(-1)
    std = np.asarray(opts.std, dtype=np.float32).reshape(-1)
    if mean.size not in (1, channels) or std.size not in (1, channels):
        raise UsageError(f"mean and std need 1 or {channels} values")
    if (std == 0).any():
        raise UsageError("std must not be 0")
    out = np.empty((len(files), int(size[0]), int(size[1]), channels), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                rgb = im.convert("L" if channels == 1 else "RGB")
                im = rgb.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.float32)
        except Exception as e:
            raise CalibrationError(f"cannot read image {f}: {e}") from e
        out[i] = arr.reshape(out.shape[1:]) * opts.scale
    out = (out - mean) / std
    dt = dtype_of(model, name) or np.dtype(np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2) if layout == "NCHW" else out).astype(dt)
