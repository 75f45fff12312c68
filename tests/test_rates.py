"""Rates from the moments counters were read: late, replayed and bunched reads stay true."""

from __future__ import annotations

import pytest

from vpartcollect.output.rates import RateTracker

NS = 1e9  # the test driver's oracle: a cpu counter that is the wall clock in ns


def wall(t: float) -> int:
    return int(t * NS)


def test_rate_never_spikes() -> None:
    r = RateTracker(min_gap=0.5)
    assert r.rate("d", "k", 10.0, 100) is None  # first
    assert r.rate("d", "k", 20.0, 200) == 10.0
    assert r.rate("d", "k", 20.0, 300) is None  # same read time: nothing changes
    assert r.rate("d", "k", 15.0, 300) is None  # older than the last read: nothing changes
    assert r.rate("d", "k", 30.0, 50) is None  # counter reset: VM rebooted
    assert r.rate("d", "k", 40.0, 150) == 10.0  # and the next one is a normal rate again
    assert r.forget_older_than(35.0) == 0
    assert r.forget_older_than(45.0) == 1


def test_a_replay_read_just_before_the_next_tick_shifts_no_rate() -> None:
    """A worker killed in tick 101 is replaced; its successor reads 101 at 101.95, just
    before tick 102 is read at 102.01. Every rate is the truth (1e9), none is lost."""
    r = RateTracker(min_gap=0.5)
    reads = [100.01, 101.95, 102.01, 103.02, 104.0]
    rates = [r.rate("d", "cpu", t, wall(t)) for t in reads]
    assert rates[0] is None
    assert rates[1:] == [pytest.approx(NS, rel=1e-6)] * 4


def test_bunched_reads_without_an_older_one_give_no_rate() -> None:
    r = RateTracker(min_gap=0.5)
    assert r.rate("d", "cpu", 100.0, wall(100.0)) is None
    assert r.rate("d", "cpu", 100.01, wall(100.01)) is None  # 10 ms: noise, not a rate
    assert r.rate("d", "cpu", 100.6, wall(100.6)) == pytest.approx(NS, rel=1e-6)


def test_a_read_stamped_late_is_rated_over_its_own_span() -> None:
    """A call blocked on a lock for 0.9 s returns at 101.9: the counter was read then, so
    the rate divides by 1.9 s, not by the 1 s between the ticks it belongs to."""
    r = RateTracker(min_gap=0.5)
    r.rate("d", "cpu", 100.0, wall(100.0))
    assert r.rate("d", "cpu", 101.9, wall(101.9)) == pytest.approx(NS, rel=1e-6)
    assert r.rate("d", "cpu", 102.0, wall(102.0)) == pytest.approx(NS, rel=1e-6)


def test_rates_use_monotonic_times_and_none_spans_a_step_of_the_wall_clock() -> None:
    """Read times are monotonic; each sample says how far the wall clock was ahead
    (``offset``). A counter that follows the wall clock (the test driver's cpu time)
    jumps with a step: no rate across it, the next one is the truth again. Slewing
    (the offset creeping) changes nothing."""
    r = RateTracker(min_gap=0.5)
    off = 1_700_000_000.0

    def cpu(mono: float) -> float | None:
        r.clock("d", off)
        return r.rate("d", "cpu", mono, wall(off + mono))

    assert cpu(100.0) is None
    assert cpu(101.0) == NS
    off += 0.0005  # slewing
    assert cpu(102.0) == pytest.approx(NS, rel=1e-3)
    off += 3600  # +1 h: a rate across it would be 3601 times the truth
    assert cpu(103.0) is None
    assert cpu(104.0) == NS
    off -= 3600  # -1 h: the wall clock goes back, the monotonic read times never do
    assert cpu(105.0) is None
    assert cpu(106.0) == NS  # on main: None for an hour ("older than the last read")
    # A counter that does not follow the wall clock (a real vCPU) is not rated across a
    # step either: one rate is lost, none is wrong.
    assert not r.clock("e", off) and r.rate("e", "net", 105.0, 1000) is None
    assert r.clock("e", off + 3600) and r.rate("e", "net", 106.0, 2000) is None
    assert not r.clock("e", off + 3600) and r.rate("e", "net", 107.0, 3000) == 1000.0
    assert r.forget_older_than(200.0) == 2 and r.domains() == 0
    assert not r.clock("e", off)  # forgotten with its counters: a first sample again
