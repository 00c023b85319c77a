"""Schedules: which training steps are recorded, as plain callables ``step -> bool``."""

from __future__ import annotations

from collections.abc import Callable

from gradwatch._errors import GradwatchTypeError, GradwatchValueError

#: Record the full statistics every this many steps unless told otherwise. Chosen from
#: benchmarks/overhead.py (docs/performance.md): the cost stays within 2% of a step.
DEFAULT_EVERY = 32

Schedule = Callable[[int], bool]


def every_n(n: int) -> Schedule:
    """A schedule that records steps 0, n, 2n, ..."""
    return lambda step: step % n == 0


def as_schedule(every: int | Schedule) -> Schedule:
    """`every` (an int N: every N steps, or a callable ``step -> bool``) as a schedule."""
    if callable(every):
        return every
    if isinstance(every, bool) or not isinstance(every, int):
        raise GradwatchTypeError(
            f"every must be a positive int (record every N steps) or a callable step -> bool, "
            f"got {every!r}"
        )
    if every < 1:
        raise GradwatchValueError(f"every must be at least 1, got {every}")
    return every_n(every)
