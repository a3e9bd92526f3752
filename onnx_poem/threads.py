"""Thread counts of a run (``--threads N``): onnxruntime's intra-op pool and the BLAS libraries loaded.

The calibration passes run in onnxruntime, the statistics and solvers in numpy's and
scipy's BLAS (each wheel bundles its own OpenBLAS).  Both default to every core of
the machine; :func:`limit_threads` caps all of them for the duration of a run and
restores the previous BLAS settings afterwards.  BLAS libraries are found among the
shared objects the process has loaded (``/proc/self/maps``, Linux) by the
OpenBLAS thread-control symbols; elsewhere only onnxruntime is capped and a log
line says that BLAS follows ``OPENBLAS_NUM_THREADS``.

Idle BLAS workers (:func:`short_blas_spin`): an OpenBLAS worker busy-waits for
``2^28`` cycles (about 0.1 s) after each call before it sleeps.  numpy and scipy
load one OpenBLAS each (onnxruntime's workers do not spin, see :mod:`onnx_poem.graph`), so on a machine with
few cores each library's calls ran beside the other's spinning worker: an
``ssyrk`` (scipy) alternating with a matrix product (numpy) took twice as long
as the same calls alone (measured, 2 cores).  A run shortens the spin to
:data:`SPIN_LOG2` (``2^20`` cycles, well under a millisecond), enough to catch
back-to-back calls of one library.
"""

from __future__ import annotations

import ctypes
import logging
import os
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


def _openblas_libraries() -> list[ctypes.CDLL]:
    """Every OpenBLAS the process has loaded (by the shared objects in ``/proc/self/maps``; none elsewhere)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    paths = sorted({line.split()[-1] for line in maps.read_text().splitlines() if "openblas" in line.lower()})
    out = []
    for path in paths:
        try:
            out.append(ctypes.CDLL(path))
        except OSError:
            continue
    return out


def blas_controls() -> list[tuple[Callable[[], int], Callable[[int], None]]]:
    """``(get, set)`` thread-count functions of every OpenBLAS the process has loaded (one per library)."""
    out = []
    for lib in _openblas_libraries():
        for get_name, set_name in _SYMBOLS:
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                get, put = getattr(lib, get_name), getattr(lib, set_name)
                get.restype, put.restype, put.argtypes = ctypes.c_int, None, [ctypes.c_int]
                out.append((get, put))
                break
    return out


#: log2 of the cycles an idle OpenBLAS worker spins during a run (OpenBLAS's own default is 28)
SPIN_LOG2 = 20

#: OpenBLAS's environment variable of the idle spin (log2 cycles, 4-30)
SPIN_ENV = "OPENBLAS_THREAD_TIMEOUT"


def spin_controls() -> list[tuple[Callable[[], int], Callable[[], None]]]:
    """``(timeout, restart)`` of every loaded OpenBLAS that can reread its spin setting: ``timeout()`` the log2
    cycles in force; ``restart()`` rereads ``OPENBLAS_THREAD_TIMEOUT`` and stops the workers, which the next
    threaded call starts again with the new setting (OpenBLAS reads it only when it starts its workers)."""
    out: list[tuple[Callable[[], int], Callable[[], None]]] = []
    for lib in _openblas_libraries():
        names = ("openblas_thread_timeout", "openblas_read_env", "blas_thread_shutdown_")
        if all(hasattr(lib, n) for n in names):
            timeout = lib.openblas_thread_timeout
            timeout.restype = ctypes.c_int
            out.append((timeout, _restarter(lib)))
    return out


def _restarter(lib: ctypes.CDLL) -> Callable[[], None]:
    """``lib``'s restart (see :func:`spin_controls`)."""
    lib.openblas_read_env.restype = None
    lib.blas_thread_shutdown_.restype = ctypes.c_int

    def restart() -> None:
        lib.openblas_read_env()
        lib.blas_thread_shutdown_()

    return restart


@contextmanager
def short_blas_spin(log2_cycles: int = SPIN_LOG2) -> Iterator[None]:
    """Run the block with idle OpenBLAS workers spinning ``2^log2_cycles`` cycles before they sleep (see the
    module docstring), then restore the setting.  Process-wide, like the thread counts: call it from the thread
    that runs the BLAS work, with no BLAS call running in another thread (the workers are restarted).  A setting
    the user gave (``OPENBLAS_THREAD_TIMEOUT`` in the environment, or an enclosing call) is left as it is."""
    if SPIN_ENV in os.environ:
        yield
        return
    controls = spin_controls()
    os.environ[SPIN_ENV] = str(log2_cycles)
    for _, restart in controls:
        restart()
    try:
        yield
    finally:
        del os.environ[SPIN_ENV]
        for _, restart in controls:
            restart()


@contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Run the block with at most ``n`` threads in onnxruntime and in every loaded BLAS (``None``: as they are),
    and with short idle spins of the BLAS workers (:func:`short_blas_spin`)."""
    if n is None:
        with short_blas_spin():
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
        with short_blas_spin():
            yield
    finally:
        for (_, put), b in zip(controls, before, strict=True):
            put(b)
        _ORT_THREADS.reset(token)
