"""Statistics of a group's consumers from the calibration batches (the statistics stage).

For every consumer: the streaming Grams and reservoirs of :class:`LayerStats`
(targets from the original model, inputs from the current one, both run
segment-wise by :class:`onnx_poem.cascade.Stream`), and the solver's view of
them (:func:`layer_data`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arena import release_arena
from ..cascade import Current, Stream, cut_position
from ..config import PruneConfig
from ..coupling import ChannelGroup, Consumer
from ..graph import GraphView
from ..solvers import LayerData, Samples
from ..solvers.activations import apply as act_apply
from ..solvers.activations import derivative as act_derivative
from .im2col import input_samples, output_samples, positions_of, sample_positions
from .stats import LayerStats


def layer_data(c: Consumer, W0: np.ndarray, st: LayerStats) -> LayerData:
    """Solver view of consumer ``c`` with effective weights ``W0: (m, n+1)`` and its statistics."""
    channels = c.in_channels or 1

    def samples(r: Any) -> Samples:
        m = W0.shape[0]
        empty = np.zeros((0, m), dtype=np.float32)
        if not len(r):
            return Samples(np.zeros((0, W0.shape[1] - 1), dtype=np.float32), empty, empty, empty)
        return Samples(
            X=r.get("x"),
            Y=r.get("y") if "y" in r else None,
            # [R, memory] a consumer without a residual offset stores none: one zero seen as (R, m)
            S=r.get("s") if "s" in r else np.broadcast_to(np.float32(0), (len(r), m)),
            Z=r.get("z"),
        )

    return LayerData(
        G=st.G,
        P=st.P,
        Gw=st.Gw,
        Pw=st.Pw,
        W0=W0,
        k=(W0.shape[1] - 1) // channels,
        count=st.count,
        activation=c.activation.kind,
        act_params=c.activation.params,
        fit=samples(st.fit),
        held=samples(st.held),
        index=None if c.index is None else np.asarray(c.index, dtype=np.int64),
    )


def collect(
    view: GraphView,
    current: Current,
    g: ChannelGroup,
    W0s: list[np.ndarray],
    streams: tuple[Stream, Stream],
    next_cut: int | None,
    n_fit: int,
    cfg: PruneConfig,
    index: int,
    *,
    reservoirs: bool = True,
) -> list[LayerStats]:
    """Stream the calibration batches (the first ``n_fit`` samples fit, the rest held out) for group ``g``.

    Targets come from the original model (``streams[0]``), consumer inputs from
    ``current`` (``streams[1]``); both run segment-wise from their cached frontier.
    The original model never changes, so its stream may move on to ``next_cut``
    (the next group's cut) when only it is needed.  ``reservoirs = False``: the sums only (no rows kept,
    for a caller that reads nothing but ``G, P, Gw, Pw``; the sums are the same).
    """
    orig_names = [*view.inputs, *(t for c in g.consumers for t in (c.output, c.offset) if t)]
    cur_names = [t for c in g.consumers for t in (c.input, c.offset) if t]
    same = current.model is view.model
    if same:
        orig_names = list(dict.fromkeys(orig_names + cur_names))
    cut = cut_position(view, g)
    orig_stream, cur_stream = streams
    cur_runs = None if same else cur_stream.run(current.model, cur_names, cut, shared=current.shared)
    orig_cut = next_cut if (next_cut is not None and not (same and cfg.mode == "cascade")) else cut
    # [R, speed] POEM's activation-weighted sums; a consumer without an activation has weights 1, so its ``Gw``
    # and ``Pw`` are ``G`` and ``P`` (the same sums, not computed twice: BERT-base's FFN outputs, 3073-input Grams)
    weighted = [cfg.method == "poem" and c.activation.kind != "identity" for c in g.consumers]
    n_all = sum(len(c) for c in orig_stream.chunks)
    stats: list[LayerStats] = []
    caps = reservoir_caps(view, g, W0s, n_fit, n_all, cfg) if reservoirs else [(0, 0)] * len(W0s)
    for j, (W0, (fit_cap, held_cap)) in enumerate(zip(W0s, caps, strict=True)):
        seed = int(np.random.SeedSequence([cfg.seed, index, j, 1]).generate_state(1)[0])
        stats.append(LayerStats.empty(W0.shape[1], W0.shape[0], capacity=fit_cap, held_capacity=held_cap, seed=seed))
    rngs = [np.random.default_rng([cfg.seed, index, j]) for j in range(len(g.consumers))]
    seen = 0
    for orig in orig_stream.run(view.model, orig_names, cut, orig_cut):
        cur = next(cur_runs) if cur_runs else orig
        held = seen >= n_fit
        seen += len(next(iter(orig.values())))
        mask = token_mask({n: orig[n] for n in view.inputs})
        for c, st, rng, w in zip(g.consumers, stats, rngs, weighted, strict=True):
            _add_batch(c, st, rng, cur[c.input], orig, cur, mask, held=held, weighted=w, cfg=cfg)
    if cur_runs:
        for _ in cur_runs:  # not reached: both streams visit the same batches; this commits the frontier
            pass
    elif cfg.mode == "cascade":
        cur_stream.adopt(orig_stream)
    orig = cur = {}  # the last batch's tensors: the calibration runs' memory goes back before the solvers run
    release_arena()
    for st, w in zip(stats, weighted, strict=True):
        st.finish(w)
    return stats


#: [R, memory] the reservoirs of one group's consumers hold at most this many bytes together (or one full reservoir
#: of its widest consumer, when that is more)
GROUP_RESERVOIR_BYTES = 512 * 2**20


def reservoir_caps(
    view: GraphView, g: ChannelGroup, W0s: list[np.ndarray], n_fit: int, n_all: int, cfg: PruneConfig
) -> list[tuple[int, int]]:
    """Rows each consumer of ``g`` keeps of its fitting and of its held-out samples: ``--reservoir`` (half of it
    held out), never more than the samples give, and scaled down together where the group's reservoirs would
    take more than :data:`GROUP_RESERVOIR_BYTES` (or than its widest consumer's alone, if larger).

    A fitting row of a consumer with ``W0: (m, n+1)`` holds its ``n`` inputs and ``m`` post-activation targets
    (and ``m`` shortcut values where it writes into a residual sum), a held-out row ``m`` outputs more; float32.

    [R, memory] A reservoir's size does not grow with the samples past its cap, but a group's reservoirs add up:
    a torchvision DenseNet-121's third dense block is one group read by 25 consumers (the first convolution of
    each of its 24 layers and the transition), 1948 MiB of full reservoirs at 2048 samples; ResNet-50's
    last-stage stream under ``--residual stream``, 7 consumers, 1344 MiB.  Their rows shrink by one factor (a
    consumer keeps at least one); a group of one consumer is never scaled, and at 512 samples neither is any
    group of the benchmark models (EfficientNet-Lite0's widest, with ``--residual stream``: 455 MiB).
    """
    caps, sizes = [], []
    for c, W0 in zip(g.consumers, W0s, strict=True):
        # a reservoir never needs more rows than the samples can give (its buffer is sized by it)
        per = _rows_per_sample(view, c, cfg.positions)
        fit_cap = cfg.reservoir if per is None else max(1, min(cfg.reservoir, n_fit * per))
        held_cap = max(cfg.reservoir // 2, 1)
        held_cap = held_cap if per is None else max(1, min(held_cap, (n_all - n_fit) * per))
        m, n = W0.shape[0], W0.shape[1] - 1
        extra = m if c.offset else 0
        caps.append((fit_cap, held_cap))
        sizes.append(4 * (fit_cap * (n + m + extra) + held_cap * (n + 2 * m + extra)))
    budget = max(GROUP_RESERVOIR_BYTES, max(sizes, default=0))
    if sum(sizes) <= budget:
        return caps
    scale = budget / sum(sizes)
    return [(max(1, int(f * scale)), max(1, int(h * scale))) for f, h in caps]


def _rows_per_sample(view: GraphView, c: Consumer, positions: int) -> int | None:
    """Sample rows one calibration sample gives consumer ``c`` at most (``None``: its input shape is not known)."""
    shape = view.shapes.get(c.input)
    if shape is None or any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
        return None
    return min(positions, positions_of(c, (1, *shape[1:])))  # type: ignore[arg-type]


def token_mask(feed: dict[str, np.ndarray]) -> np.ndarray | None:
    """``(B, T)`` valid-token flags from an integer ``*mask*`` input (padding is not calibration data)."""
    for name, v in feed.items():
        if "mask" in name.lower() and v.ndim == 2 and v.dtype.kind in "iub":
            return v != 0
    return None


def _add_batch(
    c: Consumer,
    st: LayerStats,
    rng: np.random.Generator,
    x_hat: np.ndarray,
    orig: dict[str, np.ndarray],
    cur: dict[str, np.ndarray],
    mask: np.ndarray | None,
    *,
    held: bool,
    weighted: bool,
    cfg: PruneConfig,
) -> None:
    y_full = orig[c.output]
    total = positions_of(c, x_hat.shape)
    tokens = mask is not None and c.kind not in ("conv", "convt") and x_hat.ndim == 3 and mask.shape == x_hat.shape[:2]
    pos, ok = sample_positions(total, cfg.positions, x_hat.shape[0], rng, mask if tokens else None)
    keep = ok.reshape(-1)
    x = input_samples(c, x_hat, pos)[keep].astype(np.float32)  # the statistics take float32 rows
    y = output_samples(c, y_full, pos).astype(np.float64)[keep]
    rows = st.held if held else st.fit  # a reservoir of capacity 0 keeps nothing: no z computed for it
    s_orig = s_hat = np.zeros_like(y)
    if c.offset:
        s_orig = output_samples(c, np.broadcast_to(orig[c.offset], y_full.shape), pos).astype(np.float64)[keep]
        s_hat = s_orig
        if cur is not orig and cur[c.offset].shape == orig[c.offset].shape:  # else pruned already: the original's
            s_hat = output_samples(c, np.broadcast_to(cur[c.offset], y_full.shape), pos).astype(np.float64)[keep]
    a = y + s_orig
    kind, params = c.activation.kind, c.activation.params
    extra = {"z": act_apply(kind, params, a), **({"s": s_hat} if c.offset else {})} if rows.capacity else {}
    if held:  # without an offset S is zero (layer_data)
        st.held.add(x=x, y=y, **extra)
        return
    w = np.mean(act_derivative(kind, params, a) ** 2, axis=1) if weighted else None
    st.add_fit(x, compensated(y, s_orig, s_hat), w, extra)


def compensated(y: np.ndarray, s: np.ndarray, s_hat: np.ndarray) -> np.ndarray:
    """The least-squares target of a consumer whose output is added to a residual shortcut: ``y + s − ŝ``.

    ``y``, ``s``: ``(N, m)`` the original model's consumer output and shortcut; ``ŝ``: the pruned model's
    shortcut (``s`` itself when nothing upstream changed it: then ``y``, no copy).

    [R, measured; RESULTS.md 27] The Add's output ``y + s`` is what the rest of the model reads, so the fit
    that matches it (``W x̂ + ŝ ≈ y + s``) also corrects the error the residual stream carries from earlier
    blocks, as far as the consumer's inputs can express it; fitting ``y`` alone left that error in the stream
    for good (a block-internal group's consumer is the only layer that writes into it).  POEM's
    post-activation fit already had this target (``f(W x̂ + ŝ) ≈ f(y + s)``); the least-squares ``P`` (its
    warm start, the selection's and REAP's target) now has it too.
    """
    return y if s_hat is s else y + (s - s_hat)
