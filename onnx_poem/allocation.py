"""How many atoms (channels) each group keeps.

* Uniform ratio ``r``: a group of ``C`` atoms keeps ``max(1, round((1 − r)·C))``,
  counted per region (atoms that occur in the same tensors, e.g. one stage of a
  ResNet stream), so every tensor loses about the same fraction.
* Groups whose reconstruction is under-determined where nothing downstream can
  absorb the error are not pruned (:func:`underdetermined_outputs`).
* ``round_to = k``: every count is rounded *up* to a multiple of ``k`` (or all
  atoms), so that SIMD/tensor-core kernels see aligned channel counts; a MACs
  target then lands slightly above ``T``-by-uniform-ratio, never below the
  counts' own prediction.
* MACs target ``T`` (fraction of the original MACs): the uniform ratio whose
  predicted MACs are closest to ``T`` from below, found by bisection on a
  per-node table: a layer's MACs scale with the kept fraction of its input
  group times that of its output group (a depthwise conv: of its one group).
* PRO (``allocation="pro"``, ALGORITHMS.md §7, [R] details): every group's error
  curve ``e_g(j)`` (normalised error after ``j`` greedy removals, measured once on
  the original model's statistics) is given; removals are taken one at a time from
  the group with the smallest error increase per MAC saved,
  ``(e_g(j+1) − e_g(j)) / ΔMACs_g``, until the MACs target is met; no group loses
  more than :func:`pro_cap` of the budget's uniform ratio (at most 90 %).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .calibration.im2col import positions_of
from .coupling import ChannelGroup, Grouped
from .graph import GraphView
from .weights import weight_matrix


def underdetermined_outputs(
    view: GraphView, groups: Sequence[ChannelGroup], images: int, positions: int
) -> dict[str, str]:
    """Group id → reason, for groups with a consumer that writes a graph output from fewer samples than inputs.

    [R, measured] A logits layer after global pooling sees one sample per image: with
    448 fitting images, EfficientNet-Lite0's 1280 → 1000 classifier is an
    under-determined least-squares problem (held-out error 0.48), and its error goes
    straight into the output. Leaving that one group (the head conv's channels)
    unpruned raised REAP at ratio 0.3 from ~42 % to 61.4 % top-1 for +1.2 % of the
    MACs; on the Keras CNN (512 → 10 logits layer) it changed nothing (69.14 %).
    Hidden under-determined layers (MNIST's 9216 → 128 dense) are pruned: the next
    layer's reconstruction absorbs their error.
    """
    out: dict[str, str] = {}
    for g in groups:
        for c in g.consumers:
            if not ({c.output, c.act_out} & view.outputs):
                continue
            shape = view.shapes.get(c.input)
            per_image = 1
            if shape is not None and len(shape) > 2 and all(isinstance(d, int) for d in shape[1:]):
                per_image = min(positions, positions_of(c, (1, *shape[1:])))  # type: ignore[arg-type]
            inputs = weight_matrix(view, c).shape[1] + 1
            if images * per_image < inputs:
                out[g.id] = (
                    f"{c.label} writes graph output from {images * per_image} calibration samples for "
                    f"{inputs} inputs (under-determined); pass --samples > {inputs // per_image + 1} to prune it"
                )
                break
    return out


def _keeps(sizes: np.ndarray, ratio: float, round_to: int = 1) -> np.ndarray:
    """Atoms kept of each count in ``sizes`` at ``ratio``: ``max(1, round((1 − ratio)·n))`` (half to even, as
    Python's ``round``), rounded up to a multiple of ``round_to``, at most ``n``."""
    k = np.minimum(sizes, np.maximum(1, np.rint((1.0 - ratio) * sizes).astype(np.int64)))
    return np.minimum(sizes, -(-k // round_to) * round_to)


def region_sizes(g: ChannelGroup) -> np.ndarray:
    """Atoms in each region of ``g`` (one entry per region id): the quota that keeps every atom."""
    return np.array([g.channels]) if g.regions is None else np.bincount(np.asarray(g.regions))


def region_keeps(g: ChannelGroup, ratio: float, round_to: int = 1) -> np.ndarray:
    """Atoms kept in each region of ``g`` (one entry per region id), rounded up to multiples of ``round_to``."""
    return _keeps(region_sizes(g), ratio, round_to)


def keep_counts(groups: Sequence[ChannelGroup], ratio: float, round_to: int = 1) -> dict[str, int]:
    """Atoms kept per group id for the uniform pruning ratio ``ratio`` (applied per region)."""
    return {g.id: int(region_keeps(g, ratio, round_to).sum()) for g in groups}


#: the regions of a group an op reads (or writes): region ids, ``None`` for all of them
Regions = tuple[int, ...] | None


@dataclass(frozen=True)
class MacsTable:
    """``rows[i] = (macs, input group id or None, output group id or None)`` per MAC node; ``regions[i]``: the
    regions of those groups the node reads and writes (empty: every row sees all of its groups' regions)."""

    rows: tuple[tuple[int, str | None, str | None], ...]
    regions: tuple[tuple[Regions, Regions], ...] = ()

    @classmethod
    def build(
        cls, groups: Sequence[ChannelGroup], node_macs: Mapping[int, int], weights: Mapping[int, str] | None = None
    ) -> MacsTable:
        """``weights``: node → its weight constant's name, to find the regions a producer writes (a group with
        regions: an option-A stream, whose first stage's layers see only the first stage's channels)."""
        inp: dict[int, str] = {}
        out: dict[int, str] = {}
        rin: dict[int, Regions] = {}
        rout: dict[int, Regions] = {}
        for g in groups:
            for c in g.consumers:
                inp[c.node] = g.id
                rin[c.node] = _regions_in(g, c.index)
            for p in g.producers or (g.producer,):
                out[p] = g.id
                name = (weights or {}).get(p)
                rout[p] = next((_regions_in(g, s.index) for s in g.params if s.name == name), None)
            for gr in g.edits_of(Grouped):
                out[gr.node] = g.id  # depthwise: scales once with its group
            for node in g.scaled:
                out[node] = g.id  # attention's q·kᵀ and p·v: scale once with the kept heads
        nodes = sorted(node_macs)
        regions = tuple((rin.get(i), rout.get(i)) for i in nodes)
        return cls(
            tuple((node_macs[i], inp.get(i), out.get(i)) for i in nodes),
            regions if any(r != (None, None) for r in regions) else (),
        )

    def predict(
        self,
        groups: Sequence[ChannelGroup],
        keeps: Mapping[str, int],
        quotas: Mapping[str, np.ndarray] | None = None,
    ) -> float:
        """Predicted MACs as a fraction of the original for ``keeps`` (a group with regions keeps its ``quotas``
        in each, or else its count split as the allocation stage splits it, see :class:`MacsCost`)."""
        if self.regions and quotas is not None:
            cost = MacsCost(groups, self)
            for i, g in enumerate(groups):
                cost.set_quota(i, np.asarray(quotas[g.id]))
            return cost.fraction()
        if not self.regions:
            frac = {g.id: keeps[g.id] / g.channels for g in groups}
            total = sum(m for m, _, _ in self.rows) or 1
            kept = sum(m * (frac[i] if i else 1.0) * (frac[o] if o else 1.0) for m, i, o in self.rows)
            return kept / total
        cost = MacsCost(groups, self)
        for i, g in enumerate(groups):
            if keeps[g.id] < g.channels:
                cost.apply(i, g.channels - keeps[g.id], cost.saving(i, g.channels - keeps[g.id]))
        return cost.fraction()


def _regions_in(g: ChannelGroup, index: tuple[int, ...] | None) -> Regions:
    """The regions of ``g`` whose atoms a member with ``index`` (atom → position, ``-1``: absent) holds."""
    if g.regions is None or index is None:
        return None
    present = np.asarray(g.regions)[np.asarray(index) >= 0]
    return tuple(sorted({int(r) for r in present}))


def ratio_for_macs(groups: Sequence[ChannelGroup], table: MacsTable, target: float, round_to: int = 1) -> float:
    """The smallest uniform ratio whose predicted MACs fraction is at most ``target`` (bisection)."""
    return uniform_ratio_for(lambda keeps: table.predict(groups, keeps), groups, target, round_to)


def uniform_ratio_for(
    predict: Callable[[dict[str, int]], float], groups: Sequence[ChannelGroup], target: float, round_to: int = 1
) -> float:
    """The smallest uniform ratio whose ``predict(keep counts)`` (a cost fraction, falling with the ratio) is at
    most ``target``, by bisection (0.999 when even that is above it)."""
    lo, hi = 0.0, 0.999
    if predict(keep_counts(groups, hi, round_to)) > target:
        return hi
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if predict(keep_counts(groups, mid, round_to)) > target:
            lo = mid
        else:
            hi = mid
    return hi


#: PRO never removes more than this fraction of a group
PRO_MAX_RATIO = 0.9
#: nor more than this fraction beyond the budget's uniform ratio (see :func:`pro_cap`)
PRO_MAX_EXCESS = 0.45


def pro_cap(ratio: float) -> float:
    """The largest fraction of any group PRO removes for a budget whose uniform ratio is ``ratio``:
    ``min(PRO_MAX_RATIO, ratio + PRO_MAX_EXCESS)``.

    [R, measured; benchmarks/pro_cap.md] PRO's curves are measured with one group pruned alone, and the sum
    of such errors is optimistic for a group taken far past the others: at a 0.70 MACs target (uniform ratio
    0.28) PRO emptied three of EfficientNet-Lite0's blocks to 90 % and the model kept 77.10 % (six seeds);
    capped at 0.73 it kept 78.40 %.  A fixed cap of 0.75 cost 1.9 points at ratio 0.5, where deep cuts
    somewhere are needed, so the cap rises with the budget and is 0.9 from a uniform ratio of 0.45 on.
    """
    return min(PRO_MAX_RATIO, ratio + PRO_MAX_EXCESS)


def pro_quota(g: ChannelGroup, ratio: float) -> np.ndarray:
    """Atoms PRO keeps at least in each region of ``g`` at uniform ratio ``ratio`` (:func:`pro_cap`)."""
    return region_keeps(g, pro_cap(ratio))


def capped_curves(
    groups: Sequence[ChannelGroup], curves: Mapping[str, np.ndarray], ratio: float
) -> dict[str, np.ndarray]:
    """``curves`` cut to the removals :func:`pro_quota` allows at uniform ratio ``ratio`` (curves measured for
    another budget, a family's largest, are longer than this budget allows)."""
    return {g.id: curves[g.id][: g.channels - int(pro_quota(g, ratio).sum())] for g in groups if g.id in curves}


class Cost(Protocol):
    """What PRO spends its budget on: a fraction of the original (MACs or latency) that falls as atoms go."""

    def fraction(self) -> float:
        """The current allocation's cost over the original's."""

    def saving(self, i: int, n: int) -> float:
        """The cost saved by removing ``n`` more atoms of group ``i`` (positions in the group list)."""

    def apply(self, i: int, n: int, saving: float) -> None:
        """Take that move (``saving``: what :meth:`saving` returned for it)."""


class MacsCost:
    """:class:`Cost` in MACs from a :class:`MacsTable` (a layer scales with its input × output fractions).

    [R, measured] A group with regions keeps its count ``K`` split over them as the allocation stage splits it
    (:func:`region_keeps` at the ratio ``1 − K / channels``, with the same ``round_to``), and a layer that sees
    only some of its regions (a member with an explicit index) scales with their kept fraction: an option-A
    stream's first-stage layers see 16 of its 64 channels, and with the group's fraction for every layer PRO's
    ResNet-20 with ``--residual stream`` ended at 0.716 of the MACs for a 0.70 target (its regions' counts rounded
    up, the first stage's most of all). A member without an index (every atom, in order) keeps ``K / channels``
    during the allocation, which can differ by a rounding from the quotas' sum (the dry run counts the quotas).
    """

    def __init__(self, groups: Sequence[ChannelGroup], table: MacsTable, round_to: int = 1) -> None:
        pos = {g.id: i for i, g in enumerate(groups)}
        self.groups, self.round_to = list(groups), round_to
        self.size = np.array([g.channels for g in groups], dtype=np.float64)
        none = len(groups)  # index of "no group": fraction 1
        self.m = np.array([r[0] for r in table.rows], dtype=np.float64)
        self.ri = np.array([none if r[1] is None or r[1] not in pos else pos[r[1]] for r in table.rows], dtype=np.int64)
        self.ro = np.array([none if r[2] is None or r[2] not in pos else pos[r[2]] for r in table.rows], dtype=np.int64)
        self.total = float(self.m.sum()) or 1.0
        self.frac = np.ones(none + 1)
        self.rows_of = [np.flatnonzero((self.ri == i) | (self.ro == i)) for i in range(none)]
        # per group, the rows that see only some of its regions: (rows, their positions in rows_of, sides (0 input,
        # 1 output), a (rows × regions) membership matrix)
        found: list[list[tuple[int, int, int, Sequence[int]]]] = [[] for _ in range(none)]
        self.pin, self.pout = np.zeros(len(self.m), dtype=bool), np.zeros(len(self.m), dtype=bool)
        for row, sides in enumerate(table.regions):
            for side, (gi, regs) in enumerate(zip((int(self.ri[row]), int(self.ro[row])), sides, strict=True)):
                if regs is not None and gi < none and groups[gi].regions is not None:
                    found[gi].append((row, int(np.searchsorted(self.rows_of[gi], row)), side, regs))
                    (self.pin if side == 0 else self.pout)[row] = True
        self.partial: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None] = []
        self.region_sizes: list[np.ndarray | None] = []
        for gi, entries in enumerate(found):
            if not entries:
                self.partial.append(None)
                self.region_sizes.append(None)
                continue
            sizes = np.bincount(np.asarray(groups[gi].regions))
            member = np.zeros((len(entries), len(sizes)))
            for k, entry in enumerate(entries):
                member[k, list(entry[3])] = 1.0
            cols = [np.array([e[j] for e in entries], dtype=np.int64) for j in range(3)]
            self.partial.append((cols[0], cols[1], cols[2], member))
            self.region_sizes.append(sizes)
        self.regional = bool(self.pin.any() or self.pout.any())
        self.kept = np.array([g.channels for g in groups], dtype=np.int64)
        self.fin, self.fout = np.ones(len(self.m)), np.ones(len(self.m))  # the partial rows' fractions
        self._recount()

    def _recount(self) -> None:
        """The kept MACs summed over every row again (construction, a quota set)."""
        every = np.arange(len(self.m))
        self.macs = float((self.m * self._fractions(self.frac, self.fin, self.fout, every)).sum())

    def _fractions(self, frac: np.ndarray, fin: np.ndarray, fout: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Kept fraction of rows ``r``: input × output group fraction, a partial row's own (``fin``, ``fout``:
        the partial fractions of the rows ``r``) where it has one."""
        a, b = frac[self.ri[r]], frac[self.ro[r]]
        if self.regional:
            a, b = np.where(self.pin[r], fin, a), np.where(self.pout[r], fout, b)
        return a * b

    def _partial(self, i: int, kept: int, q: np.ndarray | None = None) -> tuple[np.ndarray, ...] | None:
        """Group ``i``'s partial rows ``(rows, positions in rows_of[i], sides, fractions)`` when it keeps ``kept``
        atoms (split as :func:`region_keeps` at ``1 − kept / channels``), or the per-region counts ``q``; ``None``
        without such rows."""
        part = self.partial[i]
        if part is None:
            return None
        rows, at, side, member = part
        n = self.region_sizes[i]
        assert n is not None
        if q is None:  # region_keeps(g, 1 − kept / channels, round_to) on the cached region sizes
            q = _keeps(n, 1.0 - kept / self.size[i], self.round_to)
        return rows, at, side, (member @ q) / (member @ n)

    def _set(self, values: tuple[np.ndarray, ...] | None) -> None:
        if values is not None:
            rows, _, side, value = values
            self.fin[rows[side == 0]] = value[side == 0]
            self.fout[rows[side == 1]] = value[side == 1]

    def fraction(self) -> float:
        return self.macs / self.total

    def saving(self, i: int, n: int) -> float:
        r, frac = self.rows_of[i], self.frac
        f = frac.copy()
        f[i] -= n / self.size[i]
        if not self.regional:  # the plain product, as before regions were counted
            ri, ro = self.ri, self.ro
            return float((self.m[r] * (frac[ri[r]] * frac[ro[r]] - f[ri[r]] * f[ro[r]])).sum())
        fin, fout = self.fin[r], self.fout[r]
        new_in, new_out = fin.copy(), fout.copy()
        values = self._partial(i, int(self.kept[i]) - n)
        if values is not None:
            _, at, side, value = values
            new_in[at[side == 0]], new_out[at[side == 1]] = value[side == 0], value[side == 1]
        before, after = self._fractions(frac, fin, fout, r), self._fractions(f, new_in, new_out, r)
        return float((self.m[r] * (before - after)).sum())

    def set_quota(self, i: int, q: np.ndarray) -> None:
        """Group ``i`` keeps ``q`` atoms per region (its whole count where it has none)."""
        self._set(self._partial(i, int(q.sum()), q))
        self.kept[i] = int(q.sum())
        self.frac[i] = q.sum() / self.size[i]
        self._recount()

    def apply(self, i: int, n: int, saving: float) -> None:
        self._set(self._partial(i, int(self.kept[i]) - n))
        self.kept[i] -= n
        self.frac[i] -= n / self.size[i]
        self.macs -= saving


def cumulative_error(curve: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(0, e(1), …, e(R))`` of an error curve, made non-decreasing: the error after ``j`` removals."""
    return np.maximum.accumulate(np.concatenate([[0.0], np.asarray(curve, dtype=np.float64)]))


def predicted_error(
    groups: Sequence[ChannelGroup], curves: Mapping[str, np.ndarray], quotas: Mapping[str, np.ndarray]
) -> float:
    """PRO's predicted output error of an allocation: the sum of each group's curve at the atoms it removes."""
    out = 0.0
    for g in groups:
        err = cumulative_error(curves.get(g.id, []))
        out += float(err[min(len(err) - 1, g.channels - int(np.sum(quotas[g.id])))])
    return out


def pro_keeps(
    groups: Sequence[ChannelGroup],
    curves: Mapping[str, np.ndarray],
    table: MacsTable | Cost,
    target: float,
    step: int = 1,
) -> dict[str, int]:
    """Atoms kept per group from the error curves ``curves[g] = (e_g(1), …, e_g(R_g))``.

    ``e_g(j)`` is the cumulative normalised error after ``j`` removals (made
    non-decreasing here); a group removes at most ``R_g`` atoms.  The predicted
    cost (``table``: MACs, or any :class:`Cost` such as measured latency) falls
    monotonically; the loop stops at the first allocation whose prediction is
    at most ``target`` (or when no group can give more).
    Ties go to the group listed first, so the result is deterministic.
    With ``step = k`` (``--round-to``) a move takes a group's count down to the
    next lower multiple of ``k``, so every pruned count is a multiple of ``k``.
    """
    ids = [g.id for g in groups]
    cost = MacsCost(groups, table, step) if isinstance(table, MacsTable) else table
    size = np.array([g.channels for g in groups], dtype=np.float64)
    none = len(ids)
    removed = np.zeros(none, dtype=np.int64)
    err = [cumulative_error(curves.get(gid, [])) for gid in ids]
    lumpy = [isinstance(cost, MacsCost) and cost.partial[i] is not None for i in range(none)]
    while cost.fraction() > target:
        best, best_score, best_saving = -1, np.inf, 0.0
        moves = np.zeros(none, dtype=np.int64)
        for i in range(none):
            kept = int(size[i]) - int(removed[i])
            n = kept - ((kept - 1) // step) * step  # atoms this move removes
            if removed[i] + n >= len(err[i]) or kept - n < 1:
                continue
            saving = cost.saving(i, n)
            # a group with regions saves MACs only where its split changes a region's count: the move goes that far
            while saving <= 0 and lumpy[i] and removed[i] + n + step < len(err[i]) and kept - n - step >= 1:
                n += step
                saving = cost.saving(i, n)
            moves[i] = n
            if saving <= 0:
                continue
            score = (err[i][removed[i] + n] - err[i][removed[i]]) / saving
            if score < best_score:
                best, best_score, best_saving = i, score, saving
        if best < 0:
            break
        removed[best] += moves[best]
        cost.apply(best, int(moves[best]), best_saving)
    return {gid: int(size[i]) - int(removed[i]) for i, gid in enumerate(ids)}
