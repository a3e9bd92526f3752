"""The cascade's memory for large models: a plan's arrays stored in files (:class:`onnx_poem.plan.Spill`) and
the current model's weights as stubs with shared arrays (:func:`onnx_poem.rewrite.apply_plan_stubbed`).

Both are meant to change no byte of the result; on these small models the thresholds are lowered so that
every array takes the large-model path."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import BUILDERS, inputs_for
from onnx_poem import external as ext
from onnx_poem import plan as plan_mod
from onnx_poem import planfile
from onnx_poem.api import run
from onnx_poem.coupling import find_groups
from onnx_poem.external import Overlay
from onnx_poem.fold import fold_constants
from onnx_poem.graph import GraphView, session
from onnx_poem.plan import Stored
from onnx_poem.planfile import PlanContext
from onnx_poem.rewrite import apply_plan, apply_plan_stubbed


@pytest.mark.parametrize("name", ["conv_chain", "residual", "conv1d", "resnet_option_a"])
def test_a_stored_plan_gives_the_same_model_and_plan_file(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = BUILDERS[name]()
    x = inputs_for(model, 64)
    monkeypatch.setattr(ext, "SESSION_MIN_BYTES", 64)  # every weight pooled: the cascade's stubs hold them all
    monkeypatch.setattr(plan_mod.Spill, "MIN_BYTES", 1 << 40)  # nothing stored
    want = run(model, ratio=0.5, calib=x, prune_residual=True, allocation="uniform")
    monkeypatch.setattr(plan_mod.Spill, "MIN_BYTES", 0)  # everything stored
    got = run(model, ratio=0.5, calib=x, prune_residual=True, allocation="uniform")
    assert got.model is not None and want.model is not None
    assert got.model.SerializeToString() == want.model.SerializeToString()
    assert len(got.plan.decisions) >= 2  # a later decision rewrites what an earlier one wrote
    # none failed: a stale weight in the cascade's current model (both runs share that path) breaks a later group
    assert not [u for u in got.report.unprunable if "left unpruned" in u["reason"]]
    stored = [u.weight_data for d in got.plan.decisions for u in d.updates]
    assert stored and all(isinstance(a, Stored) for a in stored)
    assert not any(isinstance(u.weight_data, Stored) for d in want.plan.decisions for u in d.updates)
    ctx = PlanContext("m", "0" * 64, {}, "internal")
    assert planfile.encode(got.plan, ctx, Path("p.json")) == planfile.encode(want.plan, ctx, Path("p.json"))


def test_a_stored_plans_folder_goes_with_its_last_array(monkeypatch: pytest.MonkeyPatch) -> None:
    model = BUILDERS["conv_chain"]()
    monkeypatch.setattr(plan_mod.Spill, "MIN_BYTES", 0)
    result = run(model, ratio=0.5, calib=inputs_for(model, 64))
    a = result.plan.decisions[0].updates[0].weight_data
    assert isinstance(a, Stored)
    folder = a.path.parent
    assert folder.is_dir() and np.array_equal(a.load(), np.load(a.path))
    del a, result
    gc.collect()
    assert not folder.exists()


@pytest.mark.parametrize("name", ["conv_chain", "residual", "ffn"])
def test_the_stubbed_rewrite_holds_no_weights_and_runs_as_the_full_one(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ext, "SESSION_MIN_BYTES", 64)
    model = BUILDERS[name]()
    x = inputs_for(model, 64)
    result = run(model, ratio=0.5, calib=x, prune_residual=True)
    assert result.model is not None and result.plan.decisions
    view = GraphView.build(fold_constants(model), input_shapes={model.graph.input[0].name: [1, *x.shape[1:]]})
    groups = {g.id: g for g in find_groups(view, residual=True).groups}
    full = apply_plan(view, groups, result.plan)
    stub, values = apply_plan_stubbed(view, groups, result.plan)
    assert values
    pooled = set(view.weights)
    assert pooled and all(ext.is_stub(t) for t in stub.graph.initializer if t.name in pooled)
    assert all(not t.HasField("raw_data") for t in stub.graph.initializer if t.name in pooled)
    by_name = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    for n, v in values.items():
        assert np.array_equal(v, by_name[n]) and not v.flags.writeable
    feed = {model.graph.input[0].name: x[:8]}
    shared = Overlay(values, view.weights)
    for a, b in zip(session(stub, shared=shared).run(None, feed), session(full).run(None, feed), strict=True):
        assert np.array_equal(a, b)


def test_stored_weights_write_only_what_changed_and_delete_what_they_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_mod.Spill, "MIN_BYTES", 0)
    w = plan_mod.StoredWeights(plan_mod.Spill())
    a, b = np.arange(6.0).reshape(2, 3), np.ones(4)
    w.update({"a": a, "b": b}, None)
    files = {p.name for p in w._data["a"].path.parent.iterdir()}  # type: ignore[union-attr]
    assert len(files) == 2 and np.array_equal(w["a"], a) and not w["a"].flags.writeable
    w.update({"a": a + 1, "b": b + 1}, {"a"})  # b unchanged by the caller's account: its file is kept
    assert np.array_equal(w["a"], a + 1) and np.array_equal(w["b"], b)
    w.update({"a": a + 1}, set())  # b dropped: its file goes
    folder = w._data["a"].path.parent  # type: ignore[union-attr]
    assert set(w) == {"a"} and len(list(folder.iterdir())) == 1


def test_a_stored_array_keeps_its_element_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """``.npy`` files store bfloat16 as raw two-byte values; a stored array reads back as bfloat16."""
    monkeypatch.setattr(plan_mod.Spill, "MIN_BYTES", 0)
    dt = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)
    a = np.arange(12, dtype=np.float32).reshape(3, 4).astype(dt)
    w = plan_mod.StoredWeights(plan_mod.Spill())
    w.update({"a": a, "h": a.astype(np.float16)}, None)
    for name, want in (("a", a), ("h", a.astype(np.float16))):
        got = w[name]
        assert got.dtype == want.dtype and np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_a_saved_plan_keeps_bfloat16_arrays(tmp_path: Path) -> None:
    dt = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)
    w = np.arange(6, dtype=np.float32).reshape(2, 3).astype(dt)
    u = plan_mod.ConsumerUpdate(0, "w", w, None, np.zeros(2, np.float32))
    p = plan_mod.PrunePlan((plan_mod.GroupDecision("g", 4, (0, 1), (u,)),))
    ctx = PlanContext("m", "0" * 64, {}, "internal")
    for path, data in planfile.encode(p, ctx, tmp_path / "p.json").items():
        path.write_bytes(data)
    got, _ = planfile.read(tmp_path / "p.json")
    v = got.decisions[0].updates[0]
    assert v.weight_value.dtype == dt and np.array_equal(v.weight_value.view(np.uint16), w.view(np.uint16))
    assert v.bias_value.dtype == np.float32
    plain = plan_mod.PrunePlan(
        (
            plan_mod.GroupDecision(
                "g", 4, (0, 1), (plan_mod.ConsumerUpdate(0, "w", w.astype(np.float32), None, np.zeros(2, np.float32)),)
            ),
        )
    )
    assert b'"dtypes"' not in planfile.encode(plain, ctx, tmp_path / "q.json")[tmp_path / "q.json"]


@pytest.mark.parametrize(
    ("dtypes", "needle"), [({"d0_u0_weight": "nosuch"}, "unknown element type"), ([1], "malformed")]
)
def test_a_plan_with_bad_dtypes_is_refused_in_one_line(tmp_path: Path, dtypes: object, needle: str) -> None:
    import json

    from onnx_poem.errors import UsageError

    u = plan_mod.ConsumerUpdate(0, "w", np.ones((2, 3), np.float32), None, np.zeros(2, np.float32))
    p = plan_mod.PrunePlan((plan_mod.GroupDecision("g", 4, (0, 1), (u,)),))
    for path, data in planfile.encode(p, PlanContext("m", "0" * 64, {}, "internal"), tmp_path / "p.json").items():
        path.write_bytes(data)
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["dtypes"] = dtypes
    (tmp_path / "p.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=needle) as e:
        planfile.read(tmp_path / "p.json")
    assert "\n" not in str(e.value)
