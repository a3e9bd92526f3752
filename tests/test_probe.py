"""PRO's probes: zero weights on the removed channels give the pruned model's outputs (onnx_poem/probe.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import BUILDERS, inputs_for
from onnx_poem import external
from onnx_poem.calibration.collect import collect, layer_data
from onnx_poem.calibration.sources import load_calibration
from onnx_poem.cascade import Current, Stream, cut_position
from onnx_poem.config import PruneConfig
from onnx_poem.coupling import find_groups
from onnx_poem.coupling.groups import positions
from onnx_poem.damping import group_damping
from onnx_poem.graph import GraphView
from onnx_poem.plan import GroupDecision, PrunePlan
from onnx_poem.pro import refit_alone
from onnx_poem.probe import Probe
from onnx_poem.rewrite import apply_plan
from onnx_poem.solve import consumer_update
from onnx_poem.solvers import reconstruct
from onnx_poem.verify import session
from onnx_poem.weights import effective


@pytest.mark.parametrize("stubbed", [False, True], ids=["weights", "stubs"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_probe_errors_equal_those_of_the_pruned_model(
    name: str, stubbed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if stubbed:  # every weight handed to the sessions as an array (shared, overridable ones included)
        monkeypatch.setattr(external, "SESSION_MIN_BYTES", 64)
    model = BUILDERS[name]()
    data = load_calibration(model, inputs_for(model, 24), samples=24, seed=0)
    view = GraphView.build(model, input_shapes=data.sample_shapes())
    groups = {g.id: g for g in find_groups(view, residual=True).groups}
    if not groups:
        pytest.skip("no prunable group")
    cfg = PruneConfig(ratio=0.5, mode="parallel", positions=8)
    probe_idx = np.arange(16, 24)
    probe = Probe(view, groups, data, probe_idx, 4, tmp_path)  # two batches: the frontier is read per batch
    reference = [session(model).run(None, f) for f in data.batches(probe_idx, 4)]
    chunks = [np.arange(0, 8), np.arange(8, 16)]
    streams = (Stream(view, data, chunks, tmp_path, "o"), Stream(view, data, chunks, tmp_path, "c"))
    rng = np.random.default_rng(0)
    for i, g in enumerate(sorted(groups.values(), key=lambda g: cut_position(view, g))):
        W0s = [effective(view, c)[0] for c in g.consumers]
        stats = collect(view, Current.original(view), g, W0s, streams, None, 16, cfg, i)
        layers = [layer_data(c, W0, st) for c, W0, st in zip(g.consumers, W0s, stats, strict=True)]
        removed = sorted(rng.choice(g.channels, g.channels // 2, replace=False).tolist())
        kept = np.setdiff1d(np.arange(g.channels), removed)
        updates = []
        for c, d in zip(g.consumers, layers, strict=True):
            own = positions(c.index, kept)
            W = reconstruct(d, own, method="ls", lam=group_damping(view, g, cfg)).W
            updates.append(consumer_update(view, g, c, W, own))
        alone = PrunePlan((GroupDecision(g.id, g.channels, tuple(int(k) for k in kept), tuple(updates)),))
        pruned = session(apply_plan(view, groups, alone))
        expect = sum(
            float(np.sum((p - o) ** 2))
            for f, outs in zip(data.batches(probe_idx, 4), reference, strict=True)
            for p, o in zip(pruned.run(None, f), outs, strict=True)
        )
        got_none, got = probe.errors(
            g, [refit_alone(view, g, layers, [], cfg), refit_alone(view, g, layers, removed, cfg)]
        )
        assert got == pytest.approx(expect, rel=1e-4, abs=1e-6 * probe.spread), g.id
        assert got_none < got or got == 0.0
