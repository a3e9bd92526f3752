"""Thread counts of a run (``--threads N``): onnxruntime's intra-op pool and the BLAS libraries loaded.

The calibration passes run in onnxruntime, the statistics and solvers in numpy's and
scipy's BLAS (each wheel bundles its own OpenBLAS).  Both default to every core of
the machine; :func:`limit_threads` caps all of them for the duration of a run and
restores the previous BLAS settings afterwards.  BLAS libraries are found among the
shared objects the process has loaded (``/proc/self/maps``, Linux) by the
OpenBLAS thread-control symbols; elsewhere only onnxruntime is capped and a log
line says that BLAS follows ``OPENBLAS_NUM_THREADS``.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

logger = logging.getLogger(__name__)

#: onnxruntime intra-op threads of the sessions :func:`onnx_poem.graph.session` makes (0: its default, every core)
_ORT_THREADS: ContextVar[int] = ContextVar("onnx_poem_ort_threads", default=0)

#: (get, set) symbol names of OpenBLAS builds: scipy-openblas (numpy's 64-bit ints, scipy's 32) and plain
_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


def ort_threads() -> int:
    """The onnxruntime intra-op thread count in force (0: onnxruntime's default)."""
    return _ORT_THREADS.get()


def blas_controls() -> list[tuple[Callable[[], int], Callable[[int], None]]]:
    """``(get, set)`` thread-count functions of every OpenBLAS the process has loaded (one per library)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    paths = sorted({line.split()[-1] for line in maps.read_text().splitlines() if "openblas" in line.lower()})
    out = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                get, put = getattr(lib, get_name), getattr(lib, set_name)
                get.restype, put.restype, put.argtypes = ctypes.c_int, None, [ctypes.c_int]
                out.append((get, put))
                break
    return out


@contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` threads in onnxruntime and in every loaded BLAS (``None``: as they are)."""
    if n is None:
        yield
        return
    token = _ORT_THREADS.set(n)
    controls = blas_controls()
    if not controls:
        logger.info("no OpenBLAS found in this process: BLAS threads follow OPENBLAS_NUM_THREADS")
    before = [get() for get, _ in controls]
    for _, put in controls:
        put(n)
    try:
        yield
    finally:
        for (_, put), b in zip(controls, before, strict=True):
            put(b)
        _ORT_THREADS.reset(token)
