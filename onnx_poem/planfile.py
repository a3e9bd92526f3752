"""A pruning plan on disk: ``PLAN.json`` (what to keep, readable) beside ``PLAN.npz`` (the new weights).

``PLAN.json``::

    {"format": "onnx-poem-plan", "version": 1,
     "model": {"name": ..., "sha256": <of the constant-folded (with srn: serialised) model's serialisation>},
     "input_shapes": {input: [1, dims...]},   # one sample (batch 1): the shapes the graph was analysed with
     "residual": "internal" | "stream" | "srn" | "project",  # the analysis (older plans: "prune_residual": bool)
     "settings": {...},                               # settings: informational
     "decisions": [{"group": id, "channels": C, "keep": [atoms],
                    "updates": [{"node": i, "weight": name, "bias": name | null,
                                 "weight_array": key, "bias_array": key}]}],
     "dtypes": {key: "bfloat16", ...}}               # only for arrays of a type .npy cannot name

``PLAN.npz`` holds the arrays under those keys (written with fixed zip
timestamps, so the same plan gives the same bytes).  Applying a plan needs the
same model (the hash is checked) and no calibration data.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .plan import ConsumerUpdate, Data, GroupDecision, PrunePlan, value

FORMAT = "onnx-poem-plan"
VERSION = 1


@dataclass(frozen=True)
class PlanContext:
    """What a plan was computed for: the model, the analysis shapes and options, the settings."""

    model_name: str
    model_sha256: str
    input_shapes: dict[str, list[int]]
    residual: str  # :data:`onnx_poem.config.RESIDUALS`
    settings: dict[str, Any] = field(default_factory=dict)


def arrays_path(json_path: Path) -> Path:
    """``PLAN.npz`` beside ``PLAN.json``."""
    return json_path.with_suffix(".npz")


def encode(plan: PrunePlan, ctx: PlanContext, json_path: Path) -> dict[Path, bytes]:
    """The two files of ``plan`` (``json_path`` and its ``.npz``) as bytes, for an atomic write."""
    arrays: dict[str, Data] = {}
    decisions = []
    for i, d in enumerate(plan.decisions):
        updates = []
        for j, u in enumerate(d.updates):
            wkey, bkey = f"d{i}_u{j}_weight", f"d{i}_u{j}_bias"
            arrays[wkey], arrays[bkey] = u.weight_data, u.bias_data  # read one at a time by _npz
            updates.append(
                {"node": u.node, "weight": u.weight, "bias": u.bias, "weight_array": wkey, "bias_array": bkey}
            )
        decisions.append({"group": d.group_id, "channels": d.channels, "keep": list(d.keep), "updates": updates})
    # element types a ``.npy`` header cannot name (bfloat16 is stored as raw two-byte values): named here
    extension = {k: a.dtype.name for k, a in arrays.items() if a.dtype.isbuiltin == 2}  # 2: a user-defined type
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": ctx.model_name, "sha256": ctx.model_sha256},
        "input_shapes": ctx.input_shapes,
        "residual": ctx.residual,
        "settings": ctx.settings,
        "arrays": arrays_path(json_path).name,
        "decisions": decisions,
        **({"dtypes": extension} if extension else {}),
    }
    return {json_path: (json.dumps(doc, indent=1) + "\n").encode(), arrays_path(json_path): _npz(arrays)}


def _npz(arrays: dict[str, Data]) -> bytes:
    """An ``.npz`` of ``arrays`` with fixed member timestamps (``np.savez`` stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for key, a in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(value(a)), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def read(json_path: Path) -> tuple[PrunePlan, PlanContext]:
    """The plan and context saved at ``json_path`` (and its ``.npz``).

    Raises:
        UsageError: a missing, unreadable or malformed plan (one line naming the file and what is wrong).
    """
    try:
        doc = json.loads(Path(json_path).read_text())
    except FileNotFoundError:
        raise UsageError(f"plan file not found: {json_path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{json_path} is not a plan file ({type(e).__name__}: {e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f'{json_path} is not an onnx-poem plan (no "format": "{FORMAT}")')
    if doc.get("version") != VERSION:
        raise UsageError(f"{json_path}: plan version {doc.get('version')!r} is not supported (this is {VERSION})")
    npz = Path(json_path).parent / str(doc.get("arrays", arrays_path(Path(json_path)).name))
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UsageError(f"the plan's weights are missing: {npz}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UsageError(f"{npz}: unreadable plan weights ({type(e).__name__}: {e})") from e
    try:
        for key, name in dict(doc.get("dtypes", {})).items():
            if key in arrays:
                arrays[key] = arrays[key].view(_extension_dtype(str(name), json_path))
        decisions = tuple(
            GroupDecision(
                str(d["group"]),
                int(d["channels"]),
                tuple(int(k) for k in d["keep"]),
                tuple(
                    ConsumerUpdate(
                        int(u["node"]),
                        str(u["weight"]),
                        arrays[u["weight_array"]],
                        None if u["bias"] is None else str(u["bias"]),
                        arrays[u["bias_array"]],
                    )
                    for u in d["updates"]
                ),
            )
            for d in doc["decisions"]
        )
        ctx = PlanContext(
            model_name=str(doc["model"]["name"]),
            model_sha256=str(doc["model"]["sha256"]),
            input_shapes={str(k): [int(x) for x in v] for k, v in doc["input_shapes"].items()},
            residual=str(doc["residual"]) if "residual" in doc else ("stream" if doc["prune_residual"] else "internal"),
            settings=dict(doc.get("settings", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{json_path}: malformed plan ({type(e).__name__}: {e})") from e
    return PrunePlan(decisions), ctx


def _extension_dtype(name: str, json_path: Path) -> np.dtype[Any]:
    """The element type ONNX maps to the NumPy type ``name`` (bfloat16, float8 types: ``ml_dtypes``)."""
    import onnx  # only for such plans: this module is plain data otherwise

    for t in onnx.TensorProto.DataType.values():
        try:
            dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t))
        except (KeyError, TypeError, ValueError):
            continue
        if dt.name == name:
            return dt
    raise UsageError(f"{json_path}: unknown element type {name!r} in the plan's dtypes")
