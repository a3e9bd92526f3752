"""How many channels each group keeps.

Uniform allocation: a group of ``C`` channels keeps ``max(1, round((1 − r)·C))``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .coupling import ChannelGroup


def keep_counts(groups: Sequence[ChannelGroup], ratio: float) -> dict[str, int]:
    """Channels kept per group id for the uniform pruning ratio ``ratio``."""
    return {g.id: min(g.channels, max(1, round((1.0 - ratio) * g.channels))) for g in groups}
