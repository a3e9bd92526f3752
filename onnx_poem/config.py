"""The options of a run, validated once (:class:`PruneConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError
from .solvers import METHODS

#: how the pruning budget is spread over the groups (``uniform``: one ratio; ``pro``: by error per MAC)
ALLOCATIONS = ("uniform", "pro")


@dataclass(frozen=True)
class PruneConfig:
    """Options of :func:`prune` (see the CLI help for their meaning)."""

    ratio: float | None = None
    target_macs: float | None = None
    method: str = "poem"
    mode: str = "cascade"
    samples: int = 512
    seed: int = 0
    positions: int = 64
    reservoir: int = 16384
    batch_size: int = 32
    damping: float = 0.01
    prune_residual: bool = False
    allocation: str = "pro"
    round_to: int = 1
    synthetic: bool = False
    dry_run: bool = False

    def validate(self) -> None:
        if (self.ratio is None) == (self.target_macs is None):
            raise UsageError("give exactly one of ratio and target_macs")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise UsageError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.target_macs is not None and not 0.0 < self.target_macs <= 1.0:
            raise UsageError(f"target_macs must be in (0, 1], got {self.target_macs}")
        if self.method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.mode not in ("cascade", "parallel"):
            raise UsageError(f"mode must be cascade or parallel, got {self.mode!r}")
        for name in ("samples", "positions", "reservoir", "batch_size", "round_to"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")
        if not self.damping > 0:
            raise UsageError(f"damping must be > 0, got {self.damping}")
