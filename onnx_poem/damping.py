"""The ridge ``λ`` of a group's selection and reconstruction (``--damping``, by default chosen per group).

Every solve is damped toward the original weights: ``(G + δI)`` with ``δ = λ·mean(diag G)``, paired
with ``P + δW0`` (:mod:`onnx_poem.solvers.linalg`).  [R, measured] No single ``λ`` serves both model
families of the benchmark (``benchmarks/heads.md``, ``benchmarks/damping.md``):

* MiniLM, whose consumers read token rows, keeps 0.4-0.9 more Spearman points at 0.7-0.5 of the
  MACs with ``λ = 0.1`` than with 0.01 (three seeds each), and only 0.1 meets the issue-12 bars;
  the errors of held-out calibration sentences favour 0.01 there, because a sentence's paraphrase is
  usually among the fitting ones, so the calibration data cannot make this choice itself.
* EfficientNet-Lite0 at 0.7 of the MACs loses 2.6 points with 0.1 (75.07 vs 77.67, three seeds), and
  every CNN table was measured with 0.01.

So a group whose consumers all read token sequences (a ``(batch, tokens, features)`` input of a
MatMul or Gemm: attention output projections, FFNs) gets :data:`TOKEN_DAMPING`, every other group
:data:`DEFAULT_DAMPING`; a ``--damping`` the user gives applies to every group.
"""

from __future__ import annotations

from .config import PruneConfig
from .coupling import ChannelGroup, Consumer
from .graph import GraphView

#: λ of convolutions, fully connected heads and every group not made only of token consumers
DEFAULT_DAMPING = 0.01
#: λ of a group whose consumers all read token sequences
TOKEN_DAMPING = 0.1


def reads_tokens(view: GraphView, c: Consumer) -> bool:
    """Whether consumer ``c`` is a MatMul/Gemm reading a rank-3 ``(batch, tokens, features)`` input."""
    shape = view.shapes.get(c.input)
    return c.kind not in ("conv", "convt") and shape is not None and len(shape) == 3


def group_damping(view: GraphView, g: ChannelGroup, cfg: PruneConfig) -> float:
    """``λ`` of group ``g``: ``cfg.damping`` when given, else by its consumers (module docstring)."""
    if cfg.damping is not None:
        return cfg.damping
    if g.consumers and all(reads_tokens(view, c) for c in g.consumers):
        return TOKEN_DAMPING
    return DEFAULT_DAMPING
