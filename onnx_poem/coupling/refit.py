"""Refits of the layers that read a residual stream (RESULTS.md [R] 32).

Under ``--residual internal`` a residual stream keeps its channels, but in the cascade its values carry the error
every earlier block left, and each block's first layer (the producer of the block's own group) reads it with its
original weights.  A *refit* is a pseudo-group of one such layer: the stream's channel group (as
:func:`find_groups` with ``residual=True`` traces it) cut down to that layer as its only consumer, with nothing
to slice.  Solved with every atom kept, just before the block's group, it refits the layer from the pruned
model's stream to the original's outputs (by least squares, whatever the method:
:func:`onnx_poem.pipeline.solving.refit_config`), so the block's group is then selected and fitted on the repaired
layer's outputs.  Its decision keeps every atom, so the rewrite only writes the layer's new weights, which the
block's decision then slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..graph import GraphView
from .groups import ChannelGroup, Consumer
from .trace import find_groups

#: a refit's id is the stream group's, this, and the refitted layer's label
MARK = "@refit:"


def reader_refits(view: GraphView, groups: Sequence[ChannelGroup]) -> dict[str, tuple[ChannelGroup, ...]]:
    """Per id of a group of ``groups``, the refits to solve just before it: one per producer of that group that
    reads a residual stream (none where a producer reads no stream, or where ``groups`` are themselves the
    stream's groups)."""
    if any(g.residual for g in groups):
        return {}
    readers = {c.node: (s, c) for s in find_groups(view, residual=True).groups if s.residual for c in s.consumers}
    out: dict[str, tuple[ChannelGroup, ...]] = {}
    for g in groups:
        refits = tuple(_refit(*readers[p]) for p in sorted({g.producer, *g.producers}) if p in readers)
        if refits:
            out[g.id] = refits
    return out


def _refit(stream: ChannelGroup, c: Consumer) -> ChannelGroup:
    return replace(
        stream,
        id=f"{stream.id}{MARK}{c.label}",
        producer=c.node,  # where the cascade's streams cut for it (with the stream tensor's producer)
        producers=(),
        consumers=(c,),
        params=(),
        edits=(),
        tensors=(c.input,),
        residual=False,
        scaled=(),
    )


def refit_groups(refits: dict[str, tuple[ChannelGroup, ...]]) -> dict[str, ChannelGroup]:
    """The refits of :func:`reader_refits` by their own ids (what a plan's decisions name)."""
    return {r.id: r for rs in refits.values() for r in rs}
