"""The pruning plan: what to keep and which weights to write, as plain data.

[R, memory] A plan's large arrays may live in files (:class:`Stored`, written by :class:`Spill`): a plan holds
a new value for almost every weight of the model, and held in memory beside the original and the pruned model
it was a third copy of the weights (a 2.5 GB MLP's run peaked 2.3 GB higher).  Each use reads the file again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Stored:
    """An array kept in the ``.npy`` file ``path`` of ``spill`` (whose folder lives while any of its arrays does)."""

    path: Path
    spill: Spill
    dtype: np.dtype[Any]  # the array's own (``.npy`` files keep extension types such as bfloat16 as raw bytes)

    def load(self) -> np.ndarray:
        """The array, read from its file (a new array at every call)."""
        a = np.asarray(np.load(self.path, allow_pickle=False))
        return a if a.dtype == self.dtype else a.view(self.dtype)


#: a plan's array: in memory, or in a file
Data = np.ndarray | Stored


def value(a: Data) -> np.ndarray:
    """The array ``a`` holds (read from its file if stored)."""
    return a.load() if isinstance(a, Stored) else a


class Spill:
    """A temporary folder for a plan's large arrays, removed when no :class:`Stored` of it is left (or at exit)."""

    #: arrays of at least this many bytes are stored; smaller ones stay in memory
    MIN_BYTES = 1 << 20

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="onnx-poem-plan-")
        self._count = 0

    def keep(self, a: Data) -> Data:
        """``a`` stored in a new file if it is large, else ``a`` itself."""
        if isinstance(a, Stored) or a.nbytes < self.MIN_BYTES:
            return a
        path = Path(self._dir.name) / f"{self._count}.npy"
        self._count += 1
        np.save(path, np.ascontiguousarray(a), allow_pickle=False)
        return Stored(path, self, a.dtype)

    def decision(self, d: GroupDecision) -> GroupDecision:
        """``d`` with its large arrays stored."""
        return replace(
            d, updates=tuple(replace(u, weight_data=self.keep(u.weight_data), bias_data=self.keep(u.bias_data))
                             for u in d.updates)
        )  # fmt: skip


class StoredWeights(Mapping[str, np.ndarray]):
    """Named arrays kept in a :class:`Spill`'s files (the small ones in memory), each read from its file on every
    access (a read-only array); :meth:`update` writes only what changed.

    [R, memory] The cascade's current model's rewritten weights: held in memory they grew to a second copy of the
    model by the last group (a 2.5 GB MLP's statistics peaked at 7.9 GB with them); a segment's session reads
    only its own weights.
    """

    def __init__(self, spill: Spill) -> None:
        self._spill = spill
        self._data: dict[str, Data] = {}

    def update(self, values: dict[str, np.ndarray], changed: Collection[str] | None) -> None:
        """Hold ``values`` (names not among them are dropped); of the names held already only those in
        ``changed`` are written again (``None``: all).  Files no longer held are deleted."""
        old = self._data
        self._data = {
            n: old[n] if n in old and changed is not None and n not in changed else self._spill.keep(v)
            for n, v in values.items()
        }
        for n, a in old.items():
            if isinstance(a, Stored) and self._data.get(n) is not a:
                a.path.unlink(missing_ok=True)

    def __getitem__(self, name: str) -> np.ndarray:
        a = self._data[name]
        if isinstance(a, Stored):
            a = a.load()
            a.flags.writeable = False
        return a

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, name: object) -> bool:
        return name in self._data


@dataclass(frozen=True)
class ConsumerUpdate:
    """New stored weight and bias of one consumer (already restricted to the kept input channels).

    ``bias`` is ``None`` when the layer had no bias: the rewrite adds one.  The arrays may be in files
    (:class:`Stored`); :attr:`weight_value` and :attr:`bias_value` read them.
    """

    node: int
    weight: str
    weight_data: Data
    bias: str | None
    bias_data: Data

    @property
    def weight_value(self) -> np.ndarray:
        return value(self.weight_data)

    @property
    def bias_value(self) -> np.ndarray:
        return value(self.bias_data)


@dataclass(frozen=True)
class GroupDecision:
    """Kept channels of group ``group_id`` and the consumers' new weights."""

    group_id: str
    channels: int
    keep: tuple[int, ...]
    updates: tuple[ConsumerUpdate, ...]


@dataclass(frozen=True)
class PrunePlan:
    """Decisions in the order they were made (producers in topological order)."""

    decisions: tuple[GroupDecision, ...] = ()

    def extended(self, d: GroupDecision) -> PrunePlan:
        return PrunePlan((*self.decisions, d))
