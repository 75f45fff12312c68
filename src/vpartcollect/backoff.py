"""How long to wait before trying again: doubling from a first delay up to a cap."""

from __future__ import annotations


def backoff(attempt: int, first: float, cap: float) -> float:
    """Delay before try ``attempt + 1`` after ``attempt`` failures in a row (0: ``first``)."""
    if attempt >= 64:  # 2 ** 64 * first is past any cap; never build a huge float
        return cap
    return min(cap, first * float(2 ** max(0, attempt)))
