"""When ticks fall due, and which are written: the tick arithmetic, pure (clocks passed in).

A run's ticks are aligned to multiples of the interval. After a suspend (or a
stall of the supervisor itself) the schedule skips to the present instead of
firing every missed tick. Each instance queues ticks up to a backlog; beyond it,
the oldest are dropped and counted. ``--once`` samples every instance at once,
silently (only to prime the rates), then each instance again ONCE_GAP after its
own first sample, stamped alike: that final tick is the one written.

Ticks are stamped on the wall clock. When it steps (clock.py), the schedule is realigned
onto the new clock at once, on the tick of the present, except that no stamp this run
already gave out is given out again: after a step back into times already written,
ticks resume once the clock is past them. The supervisor never sleeps longer than an
interval, so a step is noticed within one.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TypeVar

ONCE_GAP = 1.0  # seconds between the two samples --once needs for rates
ERAS_KEPT = 16  # earlier clocks' stamp ranges remembered (steps are rare)
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
        # Stamps given out: (first, last) of each earlier clock, and of the current one.
        self._eras: list[tuple[float, float]] = []
        self._first: float | None = None
        self._last = 0.0
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
            if self._first is None:
                self._first = ts
            self._last = ts
            # After a suspend or a stall of the supervisor itself, skip to the present.
            nxt = max(ts + self.interval, math.floor(now / self.interval) * self.interval)
            self.next = self._unwritten(round(nxt, 6) or self.interval)
        return ts

    def seconds_left(self, now: float) -> float | None:
        """Seconds until the next tick, an interval at most: the caller looks at the
        clocks again by then (None: no more ticks)."""
        return min(self.next - now, self.interval) if self.next else None

    def reinterval(self, interval: float, now: float) -> None:
        """A reload changed the interval: realign from now (not for --once)."""
        if interval != self.interval and not self.once:
            self.interval = interval
            self.next = self._unwritten(math.ceil(now / interval) * interval)

    def realign(self, now: float) -> float:
        """The wall clock stepped and reads ``now``: the next tick is the present one on
        the new clock (due at once), or the first after the stamps already given out.
        Returns it (--once keeps its stamps: it lasts a second or two)."""
        if self.once:
            return self.next
        if self._first is not None:
            self._eras = [*self._eras, (self._first, self._last)][-ERAS_KEPT:]
            self._first = None
        self.next = self._unwritten(round(math.floor(now / self.interval) * self.interval, 6)
                                    or self.interval)
        return self.next

    def _unwritten(self, ts: float) -> float:
        """``ts``, or the first tick after it whose stamp no earlier clock gave out."""
        moved = True
        while moved:
            moved = False
            for first, last in self._eras:
                if first <= ts <= last:
                    ts = round((math.floor(last / self.interval) + 1) * self.interval, 6)
                    moved = True
        return ts

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
