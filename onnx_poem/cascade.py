"""Segment-wise evaluation of the calibration batches for the cascade.

Solving group ``g`` needs, per batch, tensors of the original model (targets)
and of the current, partly pruned model (inputs ``x̂``). Running both models
from their inputs for every group costs ``O(groups)`` forward passes. A
:class:`Stream` instead keeps, for every batch, the tensors that cross a *cut*
(its frontier) in a temporary directory and runs only the segment after it.

The cut of ``g`` (:func:`cut_position`) is the first node that reads or writes
one of ``g``'s tensors: no node before it changes when ``g`` is decided, so the
frontier recorded while solving ``g`` stays valid for the next group whenever
that group's cut lies at or after it (groups are mostly solved in topological
order). A group whose cut lies earlier restarts the stream from the model
inputs. Frontiers live on disk, so memory does not grow with the number of
calibration samples; a run deletes each batch of the old frontier once it has read it, so a stream
holds about one frontier on disk (a run stopped part-way forgets its frontier: the next one starts
from the inputs). Graphs whose subgraphs read outer tensors always run from the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .calibration.sources import CalibrationData
from .calibration.store import map_npy_stream
from .coupling import ChannelGroup
from .graph import GraphView, segment_session, trim_heap


@dataclass(frozen=True)
class Current:
    """A model the cascade runs (the original, or the original with the decisions so far applied) and the
    arrays it shares with the original's :attr:`GraphView.weights` (its initializers of those names are
    unchanged)."""

    model: onnx.ModelProto
    shared: Mapping[str, np.ndarray]

    @classmethod
    def original(cls, view: GraphView) -> Current:
        return cls(view.model, view.weights)


def cut_position(view: GraphView, g: ChannelGroup) -> int:
    """Index of the first node that reads or writes a tensor of ``g`` (or is one of its layers)."""
    nodes = {g.producer, *g.producers, *(c.node for c in g.consumers)}
    for t in g.tensors:
        if t in view.producer:
            nodes.add(view.producer[t])
        nodes.update(u.node for u in view.users(t))
    return min(nodes)


class Stream:
    """Per-batch tensors of one evolving model, computed from a cached frontier.

    Args:
        view: index of the original model (node positions define the cuts; the
            rewrite keeps every original tensor name).
        data: calibration samples.
        chunks: sample indices of each batch, in the order batches are visited.
        workdir: directory for the frontier files.
        tag: file-name prefix of this stream.
    """

    def __init__(self, view: GraphView, data: CalibrationData, chunks: list[np.ndarray], workdir: Path, tag: str):
        self.view, self.data, self.chunks = view, data, chunks
        self.workdir, self.tag = workdir, tag
        self.enabled = not view.captured
        self.position = 0
        self.frontier: dict[str, np.dtype[Any]] = {}
        self.files: list[Path] = []
        self._generation = 0

    def _feed(self, k: int, names: set[str] | None = None) -> dict[str, np.ndarray]:
        """Batch ``k``'s model inputs (only ``names`` among them, when given: a file-backed input is read
        from disk for every batch it is fed)."""
        return self.data.feed(self.chunks[k], names)

    def run(
        self,
        model: onnx.ModelProto,
        wanted: list[str],
        start: int,
        cut: int | None = None,
        shared: Mapping[str, np.ndarray] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield, batch by batch, the tensors ``wanted`` of ``model``; record the frontier at node ``cut``.

        ``start``: no wanted tensor is produced before this node (the stream
        restarts from the inputs if its frontier lies after it). ``model`` must
        equal the model the frontier was computed with on every node before the
        frontier's cut. ``cut`` defaults to ``start``; a cut before the frontier
        records nothing.  ``shared``: arrays holding ``model``'s initializers of those names (for the
        original model, its view's :attr:`GraphView.weights`, the default).  A yielded dict is emptied when the
        next batch is asked for (copy what must outlive it).
        """
        cut = start if cut is None else cut
        if not self.enabled or start < self.position:
            self._reset()
        if cut < self.position:
            cut = self.position
        names = self.view.crossing(cut) if self.enabled else []
        have_names = set(self.frontier) | set(self.view.inputs)
        compute = [n for n in dict.fromkeys([*wanted, *names]) if n not in have_names]
        if model is self.view.model:
            shared = self.view.weights
        sess = (
            segment_session(model, compute, cut=self.frontier, dtypes=self.view.dtypes, shared=shared)
            if compute
            else None
        )
        inputs = [i.name for i in sess.get_inputs()] if sess else []
        self._generation += 1
        files: list[Path] = []
        dtypes: dict[str, np.dtype[Any]] = {}
        need = {*inputs, *wanted, *names}
        complete = False
        try:
            for k in range(len(self.chunks)):
                have = self._batch(k, need)
                if self.files:
                    # [R, disk] batch k of the old frontier is read and never read again: dropped now, so the
                    # stream holds about one frontier on disk instead of two at the end of every run
                    self.files[k].unlink(missing_ok=True)
                if sess:
                    have.update(zip(compute, sess.run(compute, {n: have[n] for n in inputs}), strict=True))
                    # [R, memory] glibc keeps what onnxruntime freed during the run for reuse: a ResNet-50 stem
                    # segment's runs held 560 MB that way, and two streams' plateaus sat under every later peak.
                    # A trim per batch costs 10-20 ms (measured) against runs of 0.1-1.5 s
                    trim_heap()
                if names:
                    files.append(self.workdir / f"{self.tag}_{self._generation}_{k}.npy")
                    with open(files[-1], "wb") as fh:
                        for n in names:
                            np.save(fh, have[n], allow_pickle=False)
                    if k == 0:
                        dtypes = {n: have[n].dtype for n in names}
                out = {n: have[n] for n in wanted}
                yield out
                # [R, memory] the caller asked for the next batch: its tensors of this one go before the next
                # run, not after (the caller's loop variable still holds the dict; DenseNet-121's first group
                # wants 809 MB per batch of 32, and two batches' worth sat beside every run)
                out.clear()
                have.clear()
            complete = True
        finally:
            if not complete:  # stopped part-way (an error, or the caller let go): neither frontier is whole
                for f in files:
                    f.unlink(missing_ok=True)
                self._reset()
        self._reset()
        if self.enabled:
            self.position, self.frontier, self.files = cut, dtypes, files

    def frontier_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Per batch: the model inputs and the tensors of the recorded frontier."""
        for k in range(len(self.chunks)):
            yield self._batch(k)

    def _batch(self, k: int, names: set[str] | None = None) -> dict[str, np.ndarray]:
        """Batch ``k``'s model inputs (those in ``names``, when given) and its tensors of the recorded frontier."""
        have = self._feed(k, names)
        if self.files:
            have.update(zip(self.frontier, map_npy_stream(self.files[k], len(self.frontier)), strict=True))
        return have

    def adopt(self, other: Stream) -> None:
        """Take ``other``'s frontier (same model so far), sharing its files by hard links."""
        self._reset()
        self._generation += 1
        self.position, self.frontier = other.position, dict(other.frontier)
        for k, f in enumerate(other.files):
            link = self.workdir / f"{self.tag}_{self._generation}_{k}.npy"
            os.link(f, link)
            self.files.append(link)

    def reset(self) -> None:
        """Forget the frontier (the model it was computed with changed before it): the next run starts over."""
        self._reset()

    def _reset(self) -> None:
        for f in self.files:
            f.unlink(missing_ok=True)
        self.position, self.frontier, self.files = 0, {}, []
