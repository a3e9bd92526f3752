"""``Concat``: along the channel axis input ``k`` occupies positions ``offset_k …`` of the output (each input a
channel space of its own, linked to the output's); along another axis (tokens, a rotary embedding's halves)
every input carries the same channels.  Nothing to rewrite: the output has the kept channels of its inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..flow import Edge, OpKind, register

if TYPE_CHECKING:
    from ..trace import Tracer


def _concat(tr: Tracer, node: int, slot: int | None, space: int, edge: Edge) -> bool:
    view, n = tr.view, tr.view.nodes[node]
    rank = edge.rank or 0
    if edge.cols != 1 or not rank:
        tr.stop(node, "Concat of flattened channels or of unknown rank")
    if int(view.attr(node, "axis", 0)) % rank != edge.axis % rank:
        if any(view.is_const(x) for x in n.input):
            tr.stop(node, "Concat of a constant along another axis")
        joined = tr.space_of(next(x for x in [*n.input, n.output[0]] if x in tr.member))
        assert joined is not None
        for x in [*n.input, n.output[0]]:
            tr.join(x, joined, edge, via=node)
        return True
    if edge.per != 1:
        tr.stop(node, "Concat of attention heads")
    sizes = [tr.size_of(node, x, edge) for x in n.input]
    out_space = tr.space_for(node, n.output[0], sum(sizes), edge)
    offset = 0
    for x, size in zip(n.input, sizes, strict=True):
        tr.link(tr.space_for(node, x, size, edge), out_space, 0, offset, size)
        offset += size
    return True


register(
    OpKind(
        "concat",
        ("Concat",),
        hook=_concat,
        heads=True,
        doc="along the channels: each input a range of the output; along another axis: channels pass",
    )
)
