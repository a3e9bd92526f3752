"""The onnxruntime arena every session of the tool shares (onnx_poem.arena)."""

from __future__ import annotations

import resource

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_poem.arena import release_arena
from onnx_poem.graph import session

#: elements of the test model's tensors: 64 MB of float32, above glibc's largest mmap threshold (32 MB), so
#: without an arena every run takes fresh pages for them
N = 16 << 20
PAGES = 4 * N // 4096


def _model(op: str) -> onnx.ModelProto:
    """``y = Neg(op(x))`` on ``N`` floats: one intermediate and one output of 64 MB each."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    g = helper.make_graph([helper.make_node(op, ["x"], ["t"]), helper.make_node("Neg", ["t"], ["y"])], op, [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rss_pages() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1])


def test_sessions_reuse_one_arena_and_release_gives_it_back() -> None:
    x = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    first = session(_model("Relu"))
    np.testing.assert_array_equal(first.run(None, {"x": x})[0], -np.maximum(x, 0))
    del first
    # a new session (another model) finds the memory the first one's run took: no fresh pages for its tensors
    second = session(_model("Abs"))
    before = _faults()
    out = second.run(None, {"x": x})[0]
    faults = _faults() - before
    np.testing.assert_array_equal(out, -np.abs(x))
    assert faults < PAGES // 8, f"{faults} page faults for a run whose tensors take {2 * PAGES} pages"
    # released: the arena's free regions go back to the system
    del out
    held = _rss_pages()
    release_arena()
    assert held - _rss_pages() >= PAGES, "the arena kept its memory"
    del second
