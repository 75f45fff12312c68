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


def test_a_step_back_realigns_at_once_onto_the_new_clock() -> None:
    s = Schedule(1.0, now=10_000.2)
    assert [s.due(t) for t in (10_001.0, 10_002.0, 10_003.0)] == [10_001.0, 10_002.0,
                                                                   10_003.0]
    # On main the next tick stayed 10_004 and nothing was due for an hour.
    assert s.realign(6_403.4) == 6_403.0  # the present tick of the new clock
    assert s.due(6_403.4) == 6_403.0 and s.due(6_404.0) == 6_404.0
    left = s.seconds_left(6_404.5)
    assert left is not None and abs(left - 0.5) < 1e-9


def test_a_step_forward_skips_to_the_present_of_the_new_clock() -> None:
    s = Schedule(10.0, now=995.0)
    assert s.due(1000.0) == 1000.0
    assert s.realign(4_605.0) == 4_600.0  # not 1010 (an hour ago on the new clock)
    assert s.due(4_605.0) == 4_600.0 and s.due(4_610.0) == 4_610.0


def test_no_stamp_is_given_out_twice_after_a_step_back_into_written_times() -> None:
    s = Schedule(1.0, now=99.5)
    for t in range(100, 111):  # 100..110 written
        assert s.due(float(t)) == float(t)
    # Stepped back 5 s: 106..110 were written under the old clock.
    assert s.realign(106.5) == 111.0
    assert s.due(107.0) is None and s.due(110.9) is None
    left = s.seconds_left(107.0)
    assert left == 1.0  # never sleeps past an interval: a later step is seen in time
    assert s.due(111.0) == 111.0


def test_eras_of_several_steps_are_all_remembered() -> None:
    s = Schedule(1.0, now=99.5)
    for t in range(100, 104):
        s.due(float(t))  # 100..103
    assert s.realign(50.2) == 50.0  # back: 50.. is new
    for t in range(50, 53):
        s.due(float(t))  # 50..52
    assert s.realign(99.0) == 99.0  # forward to just before the first clock's stamps
    assert s.due(99.0) == 99.0 and s.due(100.0) is None  # 100..103 not again
    assert s.due(104.0) == 104.0
    assert s.realign(51.5) == 53.0  # back again into 50..52: resumes after them


def test_once_keeps_its_stamps_through_a_step() -> None:
    s = Schedule(10.0, now=500.7, once=True)
    assert s.realign(4100.0) == 500.0 and s.due(4100.0) == 500.0
