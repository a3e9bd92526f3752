"""Where the time of a run went, by stage (exclusive wall-clock seconds).

A :class:`Clock` is bound to the running :func:`onnx_poem.prune` call through a
context variable, so deep helpers mark their work with ``with stage("rewrite"):``
without threading the clock through every signature.  Stages nest; time spent
in an inner stage is charged to it alone, so the stages add up to the time
measured (the rest is ``other``).  Outside a bound clock :func:`stage` does
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

#: the stages a run reports, in pipeline order
STAGES = ("load", "statistics", "selection", "reconstruction", "latency", "allocation", "rewrite", "verification")


@dataclass
class Clock:
    """Exclusive seconds per stage name."""

    seconds: dict[str, float] = field(default_factory=dict)
    _stack: list[tuple[str, float]] = field(default_factory=list)

    def timings(self, started: float) -> dict[str, float]:
        """The stages' seconds (rounded to ms) and ``total``: the wall-clock time since ``started``."""
        return {k: round(v, 3) for k, v in self.seconds.items()} | {"total": time.perf_counter() - started}

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:
            outer, since = self._stack[-1]
            self.seconds[outer] = self.seconds.get(outer, 0.0) + now - since
        self._stack.append((name, now))

    def leave(self) -> None:
        now = time.perf_counter()
        name, since = self._stack.pop()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since
        if self._stack:
            self._stack[-1] = (self._stack[-1][0], now)


_CLOCK: ContextVar[Clock | None] = ContextVar("onnx_poem_clock", default=None)


@contextmanager
def bind(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the one :func:`stage` charges (for the duration of the block)."""
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the block's wall-clock time to ``name`` on the bound clock (exclusive of inner stages)."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    clock.enter(name)
    try:
        yield
    finally:
        clock.leave()
