"""One onnxruntime memory arena shared by every session the tool makes, emptied between the stages.

[R, speed] Sessions without an arena take every intermediate and output tensor from ``malloc``; tensors
above glibc's mmap threshold (32 MB at most: ResNet-50's batches of 32 have 25-103 MB tensors) are fresh
mappings whose every page the kernel faults in and zeroes, on every run.  A ResNet-50 prune spent half of
its onnxruntime time in the kernel that way (267 runs, 5.9 million page faults, 19.7 of 37.7 s).  A
per-session arena did not pay (session 22: the cascade makes new segment sessions for every group, each
arena starts empty, and all of them stay allocated until their session goes).  One arena registered
with onnxruntime's environment and used by every session (``session.use_env_allocators``) keeps its
memory from one session to the next, so after the first batches the runs find their tensors' memory
mapped already.

[R, memory] An arena keeps what it grew to.  :func:`release_arena` hands its free regions back to the
system (onnxruntime's arena shrinkage, requested by a run of a one-element session); the statistics pass
calls it when a group's streams are done, so the solvers never run beside the calibration runs' memory.
Weights do not live in the arena (onnxruntime reserves initializers outside it).

The registration is made once per process and cannot be undone; if onnxruntime refuses it, the sessions
take their memory from ``malloc`` as before.  Sessions the caller makes without
``session.use_env_allocators`` never see the arena.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

logger = logging.getLogger(__name__)

_LOCK = threading.RLock()  # release_arena builds its session under the lock
_REGISTERED: bool | None = None  # None: not tried yet
_SHRINKER: ort.InferenceSession | None = None
_RUN = ort.RunOptions()
_RUN.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
_ONE = np.ones(1, dtype=np.float32)  # the shrinking run's input

#: ``OrtArenaCfg`` arena extend strategy: grow by what a request needs (``kSameAsRequested``), not to the next
#: power of two, so the arena holds about what the runs use
SAME_AS_REQUESTED = 1


def _register() -> bool:
    """Register the shared CPU arena with onnxruntime's environment once; whether sessions may use it."""
    global _REGISTERED
    with _LOCK:
        if _REGISTERED is None:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            try:
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, SAME_AS_REQUESTED, -1, -1))
                _REGISTERED = True
            except Exception as e:  # onnxruntime's own error types: then every session keeps to malloc
                _REGISTERED = False
                logger.debug("no shared onnxruntime arena: %s", e)
        return _REGISTERED


def one_node_model() -> bytes:
    """A serialised one-node model ``y = −x`` on a float ``(1,)`` input ``x``, for the tool's own small sessions
    (the arena's shrinking run; :func:`onnx_poem.device.use_device`'s start check).

    At IR 7 (opset 13's): onnx's newest IR version can be past what the installed onnxruntime reads (onnx 1.23
    writes 14 by default, onnxruntime 1.31 reads up to 13: every run failed at its first step)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "one_node", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=7).SerializeToString()


def use_shared_arena(so: ort.SessionOptions) -> None:
    """Make sessions built with ``so`` take their tensors from the shared arena (see the module docstring)."""
    so.enable_cpu_mem_arena = False  # the session's own arena; the shared one replaces it
    if _register():
        so.add_session_config_entry("session.use_env_allocators", "1")


def release_arena() -> None:
    """Hand the shared arena's free memory back to the system (call when the runs of a stage are done and
    their outputs are no longer held)."""
    global _SHRINKER
    if not _register():
        return
    with _LOCK:
        if _SHRINKER is None:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.intra_op_num_threads = 1
            use_shared_arena(so)
            _SHRINKER = ort.InferenceSession(one_node_model(), so, providers=["CPUExecutionProvider"])
        _SHRINKER.run(None, {"x": _ONE}, _RUN)


@contextmanager
def arena_scope() -> Iterator[None]:
    """A run's scope: the arena is released on entry (what the process's earlier sessions left in it) and on
    exit (what the run's last sessions left), so a run neither starts beside nor leaves behind idle memory."""
    release_arena()
    try:
        yield
    finally:
        release_arena()
