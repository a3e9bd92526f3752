"""The options of a run, validated once (:class:`PruneConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from .calibration.augment import MAX_COPIES
from .device import DEVICES
from .errors import UsageError
from .solvers import METHODS

#: how the pruning budget is spread over the groups (``uniform``: one ratio; ``pro``: by error per MAC)
ALLOCATIONS = ("uniform", "pro")

#: what happens to residual streams: ``internal`` prunes inside the blocks only, ``stream`` also the
#: channels residual adds join (one group per stream), ``srn`` serialises the blocks first
#: (:mod:`onnx_poem.srn`) so every block's channels, the carried residual ones included, are pruned alone,
#: ``project`` turns identity shortcuts into 1x1 convs so each block's output channels are a group of their own,
#: ``auto`` prunes with each of :data:`AUTO_CANDIDATES` that applies and keeps the model whose outputs on the
#: selection samples are closest to the original's
RESIDUALS = ("internal", "stream", "srn", "project", "auto")

#: the policies that rewrite the model before the analysis → their :func:`onnx_poem.srn.serialise` form
SERIALISED_FORMS = {"srn": "dirac", "project": "1x1"}

#: the policies whose analysis makes channels joined by residual adds groups (``project``: one per block)
STREAM_GROUPS = ("stream", "project")

#: the policies ``--residual auto`` tries, in this order (srn measured 5-12 points worse everywhere and is not
#: tried; project won on ResNet-20 at half the MACs and lost on ResNet-56 and EfficientNet-Lite0:
#: benchmarks/residual_srn.md)
AUTO_CANDIDATES = ("internal", "stream", "project")


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
    damping: float | None = None  # None: per group, see onnx_poem.damping
    residual: str = "internal"
    allocation: str = "pro"
    round_to: int | None = None  # None: 1, or the latency table's measured step with a latency target
    synthetic: bool = False
    dry_run: bool = False
    target_latency: float | None = None  # fraction of the original's measured latency
    target_latency_ms: float | None = None  # or milliseconds
    latency_on: str | None = None  # runtime to time on (:class:`onnx_poem.latency.Runtime`); ort-cpu by default
    latency_batch: int = 1
    latency_cache: str | None = None  # folder of cached latency tables (default: see latency.budget.cache_dir)
    augment: int = 0  # augmented copies of every fitting image (calibration.augment)
    hidden: float = 0.0  # fraction of a transformer's hidden size sliced first (onnx_poem.hidden)
    hidden_rotation: str = "one"  # onnx_poem.hidden.run.ROTATIONS: one basis for the stream, or one per norm
    hidden_auto: bool = False  # --hidden auto: the fraction chosen among api.HIDDEN_CANDIDATES by measurement
    threads: int | None = None  # onnxruntime and BLAS threads (None: their defaults, every core)
    device: str = "cpu"  # where the model's runs go (onnx_poem.device.DEVICES)
    refit_readers: bool = True  # cascade: refit each block's stream-reading first layer first (coupling.refit)

    @classmethod
    def of(cls, **options: object) -> PruneConfig:
        """The config of ``options``; ``prune_residual=True`` (before ``residual`` existed) means
        ``residual="stream"``."""
        if "prune_residual" in options:
            legacy = bool(options.pop("prune_residual"))
            if legacy and options.get("residual", "stream") != "stream":
                raise UsageError(f"prune_residual=True contradicts residual={options['residual']!r}")
            options.setdefault("residual", "stream" if legacy else "internal")
        return cls(**options)  # type: ignore[arg-type]

    @property
    def stream(self) -> bool:
        """Channels joined by residual adds are analysed as groups (``stream``, and ``project``'s per block)."""
        return self.residual in STREAM_GROUPS

    @property
    def serialised_form(self) -> str | None:
        """The :func:`onnx_poem.srn.serialise` form this run prunes (``None``: the model as it is)."""
        return SERIALISED_FORMS.get(self.residual)

    @property
    def latency_target(self) -> bool:
        """A latency budget was asked for (``target_latency`` or ``target_latency_ms``)."""
        return self.target_latency is not None or self.target_latency_ms is not None

    def validate(self) -> None:
        budgets = (self.ratio, self.target_macs, self.target_latency, self.target_latency_ms)
        if sum(b is not None for b in budgets) != 1:
            raise UsageError("give exactly one of ratio, target_macs and target_latency")
        if self.target_latency is not None and not 0.0 < self.target_latency <= 1.0:
            raise UsageError(f"target_latency must be in (0, 1] (of the original's latency), got {self.target_latency}")
        if self.target_latency_ms is not None and not self.target_latency_ms > 0:
            raise UsageError(f"target_latency_ms must be > 0, got {self.target_latency_ms}")
        if not 0.0 <= self.hidden < 1.0:
            raise UsageError(f"hidden must be in [0, 1), got {self.hidden}")
        if self.hidden_auto and (self.hidden or self.residual == "auto"):
            raise UsageError("hidden_auto chooses the fraction itself: no hidden fraction nor residual='auto' with it")
        if self.hidden_rotation not in ("norm", "one"):
            raise UsageError(f"hidden_rotation must be 'norm' or 'one', got {self.hidden_rotation!r}")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise UsageError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.target_macs is not None and not 0.0 < self.target_macs <= 1.0:
            raise UsageError(f"target_macs must be in (0, 1], got {self.target_macs}")
        if self.method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.residual not in RESIDUALS:
            raise UsageError(f"residual must be one of {', '.join(RESIDUALS)}, got {self.residual!r}")
        if self.mode not in ("cascade", "parallel"):
            raise UsageError(f"mode must be cascade or parallel, got {self.mode!r}")
        for name in ("samples", "positions", "reservoir", "batch_size", "round_to", "latency_batch", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in DEVICES:
            raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.augment <= MAX_COPIES:
            raise UsageError(f"augment must be in 0..{MAX_COPIES} copies per image, got {self.augment}")
        if self.damping is not None and not self.damping > 0:
            raise UsageError(f"damping must be > 0, got {self.damping}")
        if not isinstance(self.refit_readers, bool):  # a string such as "no" would read as on
            raise UsageError(f"refit_readers must be True or False, got {self.refit_readers!r}")
