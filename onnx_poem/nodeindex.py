"""Who writes and who reads each tensor of a ``GraphProto``, and node attributes, for the normalisation passes.

The passes that rewrite exporters' forms before the analysis (:mod:`onnx_poem.flatten`, :mod:`onnx_poem.einsum`,
:mod:`onnx_poem.fused`, :mod:`onnx_poem.unmerge`) match small node patterns on the raw protobuf, before a
:class:`onnx_poem.graph.GraphView` exists; this is their one index of it.
"""

from __future__ import annotations

import onnx


class NodeIndex:
    """Initializers, producer and readers (node positions) of every tensor of graph ``g``, its outputs."""

    def __init__(self, g: onnx.GraphProto) -> None:
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: i for i, n in enumerate(g.node) for o in n.output}
        self.readers: dict[str, list[int]] = {}
        for i, n in enumerate(g.node):
            for t in dict.fromkeys(n.input):
                self.readers.setdefault(t, []).append(i)
        self.outputs = {o.name for o in g.output}

    def only_reader(self, tensor: str) -> int | None:
        """The one node that reads ``tensor`` (``None``: none, several, or it is a graph output)."""
        r = self.readers.get(tensor, [])
        return r[0] if len(r) == 1 and tensor not in self.outputs else None


def int_attr(n: onnx.NodeProto, name: str, default: int = 0) -> int:
    """Integer attribute ``name`` of ``n``."""
    return next((int(a.i) for a in n.attribute if a.name == name), default)


def ints_attr(n: onnx.NodeProto, name: str) -> tuple[int, ...] | None:
    """Integer-list attribute ``name`` of ``n`` (``None`` when absent)."""
    return next((tuple(int(v) for v in a.ints) for a in n.attribute if a.name == name), None)
