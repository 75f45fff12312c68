"""Two clocks: intervals on CLOCK_MONOTONIC, timestamps on the wall clock. Pure.

The wall clock (CLOCK_REALTIME) steps: NTP at boot, an operator's ``date -s``, a host
resumed with a stale clock. CLOCK_MONOTONIC never does, and every process on the host
shares it (the supervisor, its workers, the spooler). So the collector measures every
interval (sleeps, deadlines, the denominators of rates) on the monotonic clock and uses
the wall clock only to stamp what it writes. A step shows as a jump of the difference
between the two (``wall - monotonic``): slow corrections (NTP slewing, at most 500 ppm)
move it by milliseconds per interval, a step by its whole size.
"""

from __future__ import annotations

import time

# A jump of wall-minus-monotonic larger than this is a step. Slewing moves it at most
# 0.5 ms a second (0.3 s over ten minutes, the longest gap a rate spans in practice);
# a suspend moves it by the time suspended (monotonic stops), which is a step too.
STEP_TOLERANCE = 1.0


def read_clocks() -> tuple[float, float]:
    """The wall clock and the monotonic clock, read together (seconds)."""
    return time.time(), time.monotonic()


def stepped(offset: float, before: float, tolerance: float = STEP_TOLERANCE) -> bool:
    """Whether the wall clock stepped between two reads whose wall-minus-monotonic
    offsets were ``before`` and then ``offset``."""
    return abs(offset - before) > tolerance


class ClockWatch:
    """Notices steps of the wall clock, comparing each reading with the one before
    (so slow slewing, which moves the offset a little at a time, is followed)."""

    def __init__(self, wall: float, mono: float, tolerance: float = STEP_TOLERANCE) -> None:
        self.offset = wall - mono
        self.tolerance = tolerance

    def step(self, wall: float, mono: float) -> float:
        """How far the wall clock stepped since the last call (0.0: it did not)."""
        offset, before = wall - mono, self.offset
        self.offset = offset
        return offset - before if stepped(offset, before, self.tolerance) else 0.0
