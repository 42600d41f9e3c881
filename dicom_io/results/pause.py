"""The cyclic garbage collector paused while one study's result objects are built.

Building a QA report allocates some 10^5 short-lived pydicom and highdicom objects (a 50-annotation
study: about 10,000 data elements, built, copied and parsed). Each 700 allocations start a collection,
and every tenth of those a fuller one over the whole process heap (in ``labelqa serve``: torch, the
web app, the database layer), so the same study took 1.3 s or 1.6 s depending on where the
collections fell. Paused for the duration of one study's writing, resumed after: nothing leaks (the few
cycles made meanwhile are collected at the next collection), and the pause is bounded by one study.
"""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

__all__ = ["gc_paused", "with_gc_paused"]

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_depth = 0
_resume = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause automatic garbage collection inside the block (process-wide; nested and concurrent
    blocks count: collection resumes when the last one ends, and only if it was on when the first began)."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()


def with_gc_paused(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: ``fn`` runs inside :func:`gc_paused`."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with gc_paused():
            return fn(*args, **kwargs)
    return run
