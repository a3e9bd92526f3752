"""The pruning plan: what to keep and which weights to write, as plain data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConsumerUpdate:
    """New stored weight and bias of one consumer (already restricted to the kept input channels).

    ``bias`` is ``None`` when the layer had no bias: the rewrite adds one.
    """

    node: int
    weight: str
    weight_value: np.ndarray
    bias: str | None
    bias_value: np.ndarray


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
