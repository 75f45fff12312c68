"""Rates from the moments counters were read: late, replayed and bunched reads stay true."""

from __future__ import annotations

import pytest

from vpartcollect.rates import RateTracker

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
    """Read times are monotonic; the wall clock is ``offset`` ahead. A counter that
    follows the wall clock (the test driver's cpu time) jumps with a step: no rate
    across it, the next one is the truth again. Slewing (offset creeping) changes nothing."""
    r = RateTracker(min_gap=0.5)
    off = 1_700_000_000.0
    assert r.rate("d", "cpu", 100.0, wall(off + 100.0), off) is None
    assert r.rate("d", "cpu", 101.0, wall(off + 101.0), off) == NS
    off += 0.0005  # slewing
    assert r.rate("d", "cpu", 102.0, wall(off + 102.0), off) == pytest.approx(NS, rel=1e-3)
    # +1 h: the counter jumps 3600 s; a rate across it would be 3601 times the truth.
    off += 3600
    assert r.rate("d", "cpu", 103.0, wall(off + 103.0), off) is None
    assert r.rate("d", "cpu", 104.0, wall(off + 104.0), off) == NS
    # -1 h: the wall clock goes back, the monotonic read times never do.
    off -= 3600
    assert r.rate("d", "cpu", 105.0, wall(off + 105.0), off) is None  # went backwards anyway
    assert r.rate("d", "cpu", 106.0, wall(off + 106.0), off) == NS  # on main: None for 1 h
    # A counter that does not follow the wall clock (a real vCPU) is not rated across a
    # step either: one rate is lost, none is wrong.
    assert r.rate("d", "net", 105.0, 1000, off) is None
    assert r.rate("d", "net", 106.0, 2000, off + 3600) is None
    assert r.rate("d", "net", 107.0, 3000, off + 3600) == 1000.0
