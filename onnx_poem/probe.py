"""PRO's probes: the model's final-output error when one group alone is pruned.

Pruning atoms ``R`` of group ``g`` and refitting its consumers gives, on every
input, the same outputs as the *unpruned* model whose consumers read the
removed channels with zero weights and the kept ones with the refit weights:
the removed channels still flow, but nothing reads them any more (every reader
of a group's tensors is one of its consumers, or passes channels through to
them).  So the probes of a group need neither a pruned copy of the model nor a
new session each: [R, speed] one session per group runs the segment after the
group's cut (the first node touching it, :func:`onnx_poem.cascade.cut_position`)
from a cached frontier of the probe samples, with the consumers' weights and
biases as overridable inputs fed once per probe.  The frontier advances along
the groups in cut order (a :class:`onnx_poem.cascade.Stream` of the original model).

Error of one probe: ``Σ_b Σ_outputs ‖o' − o‖²`` over the probe batches, ``o`` the
original model's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .calibration.sources import CalibrationData
from .cascade import Stream, cut_position
from .coupling import ChannelGroup
from .graph import GraphView, constant_tensors, segment_session, session
from .plan import ConsumerUpdate, GroupDecision, PrunePlan
from .rewrite import apply_plan_stubbed, bias_name, session_arrays


class Probe:
    """Final-output errors of the original model with one group's consumers replaced.

    Args:
        view: index of the original model.
        groups: every group by id (the rewrite needs them).
        data: calibration samples.
        indices: the probe samples (selection samples, never fitting ones).
        batch_size: samples per onnxruntime run.
        workdir: directory for the frontier files.
    """

    def __init__(
        self,
        view: GraphView,
        groups: dict[str, ChannelGroup],
        data: CalibrationData,
        indices: np.ndarray,
        batch_size: int,
        workdir: Path,
    ) -> None:
        self.view, self.groups = view, groups
        chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        self.stream = Stream(view, data, chunks, workdir, "probe")
        self.outputs = [o.name for o in view.model.graph.output]
        full = session(view.model, shared=view.weights)
        self.reference = [full.run(self.outputs, feed) for feed in data.batches(indices, batch_size)]
        #: ``Σ‖o − ō‖²`` of the original outputs over the probe samples (ō: mean over them)
        self.spread = sum(float(np.sum((o - o.mean(axis=0)) ** 2)) for outs in self.reference for o in outs) or 1.0

    def errors(self, g: ChannelGroup, variants: Sequence[Sequence[ConsumerUpdate]]) -> list[float]:
        """``Σ‖o' − o‖²`` for each variant: full-width consumer updates of ``g`` (removed channels' weights zero)."""
        cut = cut_position(self.view, g)
        for _ in self.stream.run(self.view.model, [], cut):
            pass
        first = GroupDecision(g.id, g.channels, tuple(range(g.channels)), tuple(variants[0]))
        plan = PrunePlan((first,))
        model, values = apply_plan_stubbed(self.view, self.groups, plan)
        names = {bias_name(u): None for u in variants[0]} | {u.weight: None for u in variants[0]}
        specs = _specs(model, list(names))
        sess = segment_session(
            model,
            self.outputs,
            cut=self.stream.frontier,
            dtypes=self.view.dtypes,
            shared=session_arrays(self.view, self.groups, plan, values),
            overridable=list(names),
        )
        del model, values
        wanted = [i.name for i in sess.get_inputs()] + list(names)
        out = []
        for updates in variants:
            weights = {u.weight: u.weight_value for u in updates} | {bias_name(u): u.bias_value for u in updates}
            weights = {
                n: np.ascontiguousarray(np.asarray(v, dtype=specs[n][0]).reshape(specs[n][1]))
                for n, v in weights.items()
            }
            total = 0.0
            for have, ref in zip(self.stream.frontier_batches(), self.reference, strict=True):
                have.update(weights)
                got = sess.run(self.outputs, {n: have[n] for n in wanted})
                total += sum(float(np.sum((p - o) ** 2)) for p, o in zip(got, ref, strict=True))
            out.append(total)
        return out


def _specs(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
    """Element type and shape of each constant ``names`` of ``model`` (an initializer or a ``Constant`` output)."""
    tensors = constant_tensors(model.graph, names)
    return {
        name: (np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)), tuple(t.dims)) for name, t in tensors.items()
    }
