"""Out of memory: one test of what counts as it, and one way to go on (halve the batch).

A box batch that does not fit is a property of the machine, never of the model: the work is
split and goes on, and only a single item that does not fit is an error."""
from __future__ import annotations

from typing import Callable, List, TypeVar

import torch

T = TypeVar("T")


def is_oom(exc: BaseException) -> bool:
    """CUDA's out-of-memory error, Python's ``MemoryError``, or a RuntimeError that says so
    (CUDA's older spelling, and the CPU allocator's ``can't allocate memory``)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def free_cached() -> None:
    """Give the CUDA caching allocator's free blocks back before a retry."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def on_halves(call: Callable[[slice], T], n: int, join: Callable[[List[T]], T]) -> T:
    """``call(slice(0, n))``; when it runs out of memory, ``join`` of ``call`` on each half
    (recursively, down to single items, whose out-of-memory error is raised). The retry
    runs after the failed call's frames (and the tensors they hold) are released."""

    def go(lo: int, hi: int) -> T:
        try:
            return call(slice(lo, hi))
        except (RuntimeError, MemoryError) as exc:
            if hi - lo <= 1 or not is_oom(exc):
                raise
        # outside the except clause: the traceback, and with it the failed call's tensors, is gone
        free_cached()
        mid = (lo + hi) // 2
        return join([go(lo, mid), go(mid, hi)])

    return go(0, int(n))
