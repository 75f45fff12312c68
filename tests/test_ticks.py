"""The tick arithmetic: alignment, catch-up after a suspend, backlog, --once."""

from __future__ import annotations

from collections import deque

from vpartcollect.ticks import ONCE_GAP, Schedule, queue_tick


def test_ticks_are_aligned_to_the_interval() -> None:
    s = Schedule(10.0, now=1003.2)
    left = s.seconds_left(1009.9)
    assert s.due(1009.9) is None and left is not None and abs(left - 0.1) < 1e-9
    assert s.due(1010.0) == 1010.0
    assert s.due(1010.5) is None
    assert s.due(1020.01) == 1020.0
    assert s.written(1020.0)


def test_after_a_suspend_the_schedule_skips_to_the_present() -> None:
    s = Schedule(1.0, now=100.5)
    assert s.due(101.0) == 101.0
    assert s.due(160.3) == 102.0  # the tick that was due is taken once...
    assert s.due(160.4) == 160.0  # ...then the present one, not the 57 in between
    assert s.due(160.5) is None and s.due(161.0) == 161.0


def test_reinterval_realigns() -> None:
    s = Schedule(1.0, now=100.2)
    s.reinterval(30.0, now=100.2)
    assert s.due(101.0) is None and s.due(120.0) == 120.0


def test_backlog_drops_the_oldest() -> None:
    pending: deque[int] = deque()
    assert [queue_tick(pending, t, 3) for t in range(5)] == [0, 0, 0, 1, 1]
    assert list(pending) == [2, 3, 4]


def test_once_primes_silently_then_writes_each_instances_second_sample() -> None:
    s = Schedule(10.0, now=500.7, once=True)
    first = s.due(500.7)
    assert first == 500.0 and not s.written(first) and s.due(999.0) is None
    assert s.final == 500.0 + ONCE_GAP and s.written(s.final)
    s.done(0, first, mono=10.0)
    s.done(1, first, mono=10.5)  # each instance its own gap after its own first sample
    assert s.again_due(10.9) == [] and s.next_again() == 11.0
    assert s.again_due(11.0) == [0] and s.again_due(11.5) == [1]
    assert not s.finished(2)
    s.done(0, s.final, mono=11.2)
    s.done(1, s.final, mono=11.7)
    assert s.finished(2)


def test_once_without_rates_writes_the_first_sample() -> None:
    s = Schedule(10.0, now=500.7, once=True, rates=False)
    first = s.due(500.7)
    assert first == s.final == 500.0 and s.written(first)
    s.done(0, first, mono=1.0)
    assert s.finished(1)
