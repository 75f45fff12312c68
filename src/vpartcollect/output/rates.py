"""Counters -> per-second rates, computed from the moments the counters were read. Pure.

A rate divides the change of a counter by the time between two *reads* of it
(when libvirt answered), never by the time between two ticks or two frames: a
sample read late (a replay after a worker was killed, a call slowed by a lock)
then gives the true average over its own span, and the next sample's rate is
not shifted by it. Each counter keeps its last two reads: a read that lands
less than ``min_gap`` after the previous one (a replay just before the next
tick) is rated against the read before that, since two reads milliseconds apart
give noise (cgroup cpu time moves in scheduler ticks), not a rate.

Read times are monotonic (clock.py): a step of the wall clock changes no denominator.
Each sample also says how far the wall clock was ahead of the monotonic one when it
was read; when that jumped since the domain's last sample (the wall clock stepped),
its counters start again from the new sample: no rate spans a step, since what was
read under one clock is never compared with what was read under another (counters
that follow the wall clock, like the test driver's cpu time, jump with it).
"""

from __future__ import annotations

import math

from vpartcollect.clock import stepped

# counter -> (last read time, its value, the read before: time, value)
_Reads = tuple[float, float, float, float]


class RateTracker:
    """Per-domain counter state; forgets together what belongs to one domain."""

    def __init__(self, min_gap: float = 0.5) -> None:
        self.min_gap = min_gap
        # domain -> counter -> reads: nested, so a domain's counters cost no key tuple
        # each and are forgotten together.
        self._last: dict[str, dict[str, _Reads]] = {}
        self._offsets: dict[str, float] = {}  # domain -> wall minus monotonic at its last read

    def clock(self, domain: str, offset: float) -> bool:
        """A sample of ``domain`` was read with the wall clock ``offset`` ahead of the
        monotonic one: if that stepped since its last sample, its counters start again
        from this one (no rate across the step); return whether they did. Checked once
        per sample, not per counter: the counters of a sample share its read times."""
        before = self._offsets.get(domain)
        self._offsets[domain] = offset
        if before is None or not stepped(offset, before):
            return False
        self._last.pop(domain, None)
        return True

    def rate(self, domain: str, what: str, read_at: float, value: float) -> float | None:
        """Record ``value`` read at monotonic ``read_at`` for counter ``what`` of
        ``domain``; return its rate, or None: for a first read, for a read not later
        than the last one (it changes nothing), for a counter that went backwards
        (reboot, re-plugged device: rates start again from it, never a spike), or with
        no earlier read far enough."""
        counters = self._last.get(domain)
        if counters is None:
            counters = self._last[domain] = {}
        prev = counters.get(what)
        if prev is None:
            counters[what] = (read_at, value, -math.inf, 0.0)
            return None
        t1, v1, t0, v0 = prev
        if read_at <= t1:
            return None
        if value < v1:
            counters[what] = (read_at, value, -math.inf, 0.0)
            return None
        counters[what] = (read_at, value, t1, v1)
        if read_at - t1 >= self.min_gap:
            return (value - v1) / (read_at - t1)
        if t0 > -math.inf and read_at - t0 >= self.min_gap:
            return (value - v0) / (read_at - t0)
        return None

    def domains(self) -> int:
        """How many domains have rate state."""
        return len(self._last)

    def forget_older_than(self, ts: float) -> int:
        """Drop the counters last read before ``ts``, and domains left with none; return
        how many counters went."""
        dropped = 0
        for domain in list(self._last):
            counters = self._last[domain]
            stale = [what for what, reads in counters.items() if reads[0] < ts]
            for what in stale:
                del counters[what]
            dropped += len(stale)
            if not counters:
                del self._last[domain]
        self._offsets = {d: o for d, o in self._offsets.items() if d in self._last}
        return dropped
