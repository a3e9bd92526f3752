"""The state the rewrite's edits share (:class:`Rewrite`): the new constant values and the graph edits to make
on the pruned copy.

Each fix an op kind records (:class:`onnx_poem.coupling.groups.Edit`) writes here when its group is pruned;
:func:`onnx_poem.rewrite.apply_plan` then builds the copy with the new constants and runs the graph edits in
the order of their :data:`Phase` (then in the order they were recorded), so that every edit that appends an
initializer does so in a fixed order (the same plan gives the same bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import IntEnum

import numpy as np
import onnx

from ..graph import GraphView
from ..plan import Stored


class Phase(IntEnum):
    """When a graph edit runs on the pruned copy: node indices refer to the original graph in all of them
    (nodes are inserted and removed afterwards)."""

    GATHER = 0  # channel shuffles replaced by a Gather
    ATTRIBUTE = 1  # node attributes (a grouped conv's group)
    SIZES = 2  # split sizes given as new inputs


#: a graph edit: changes the pruned copy in place, returns the outputs of nodes nothing reads any more
GraphEdit = Callable[[onnx.ModelProto], Iterable[str]]


class Rewrite:
    """New constant values (:attr:`arrays`, by name) and deferred graph edits of one plan's rewrite."""

    def __init__(self, view: GraphView):
        self.view = view
        #: new values by name; a plan's stored array (:class:`onnx_poem.plan.Stored`) until :meth:`get` reads it
        self.arrays: dict[str, np.ndarray | Stored] = {}
        self._graph: list[tuple[Phase, int, GraphEdit]] = []

    def get(self, name: str) -> np.ndarray:
        """The value of constant ``name`` so far (the original's until an edit changed it)."""
        if name not in self.arrays:
            v = self.view.const(name)
            assert v is not None, name
            self.arrays[name] = v
        a = self.arrays[name]
        if isinstance(a, Stored):
            a = self.arrays[name] = a.load()
        return a

    def later(self, phase: Phase, edit: GraphEdit) -> None:
        """Run ``edit`` on the pruned copy once the new constants are in it."""
        self._graph.append((phase, len(self._graph), edit))

    def graph_edits(self) -> list[GraphEdit]:
        return [e for _, _, e in sorted(self._graph, key=lambda x: (x[0], x[1]))]
