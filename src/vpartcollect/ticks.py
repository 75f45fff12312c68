"""When ticks fall due, and which are written: the tick arithmetic, pure (clocks passed in).

A run's ticks are aligned to multiples of the interval. After a suspend (or a
stall of the supervisor itself) the schedule skips to the present instead of
firing every missed tick. Each instance queues ticks up to a backlog; beyond it,
the oldest are dropped and counted. ``--once`` samples every instance at once,
silently (only to prime the rates), then each instance again ONCE_GAP after its
own first sample, stamped alike: that final tick is the one written.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TypeVar

ONCE_GAP = 1.0  # seconds between the two samples --once needs for rates
T = TypeVar("T")


def queue_tick(pending: deque[T], tick: T, limit: int) -> int:
    """Append ``tick``; drop the oldest beyond ``limit``; return how many were dropped."""
    pending.append(tick)
    dropped = 0
    while len(pending) > limit:
        pending.popleft()
        dropped += 1
    return dropped


class Schedule:
    """The ticks of one run (``now``: wall-clock seconds; ``mono``: monotonic seconds)."""

    def __init__(self, interval: float, now: float, once: bool = False,
                 rates: bool = True) -> None:
        self.interval = interval
        self.once = once
        self.silent: set[float] = set()  # ticks sampled only to prime rates
        self.final = 0.0  # --once: the tick that is written
        self._again: dict[int, float] = {}  # --once: instance -> when its final tick is due
        self._finished: set[int] = set()  # --once: instances whose final tick is done
        if once:
            first = float(math.floor(now))
            self.final = first + ONCE_GAP if rates else first
            if rates:
                self.silent.add(first)
            self.next = first
        else:
            self.next = math.ceil(now / interval) * interval

    def due(self, now: float) -> float | None:
        """The tick due at ``now``, if any, moving on to the next one (0: none)."""
        if not self.next or now < self.next:
            return None
        ts = self.next
        if self.once:
            self.next = 0.0
        else:
            # After a suspend or a stall of the supervisor itself, skip to the present.
            nxt = max(ts + self.interval, math.floor(now / self.interval) * self.interval)
            self.next = round(nxt, 6) or self.interval
        return ts

    def seconds_left(self, now: float) -> float | None:
        """Seconds until the next tick (None: no more ticks)."""
        return self.next - now if self.next else None

    def reinterval(self, interval: float, now: float) -> None:
        """A reload changed the interval: realign from now (not for --once)."""
        if interval != self.interval and not self.once:
            self.interval = interval
            self.next = math.ceil(now / interval) * interval

    def written(self, ts: float) -> bool:
        """Whether the samples of tick ``ts`` are written (not only priming rates)."""
        return ts not in self.silent

    # -- --once -------------------------------------------------------------
    def done(self, instance: int, ts: float, mono: float) -> None:
        """An instance finished tick ``ts``: with --once, its final tick or its first."""
        if not self.once:
            return
        if ts == self.final:
            self._finished.add(instance)
        else:
            self._again[instance] = mono + ONCE_GAP

    def again_due(self, mono: float) -> list[int]:
        """--once: instances whose final tick must be queued now."""
        due = [i for i, at in self._again.items() if mono >= at]
        for i in due:
            del self._again[i]
        return due

    def next_again(self) -> float | None:
        """--once: monotonic time the next final tick falls due."""
        return min(self._again.values(), default=None)

    def finished(self, instances: int) -> bool:
        """--once: every instance has written its final tick."""
        return self.once and len(self._finished) >= instances
