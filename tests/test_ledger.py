"""One sample per domain and tick, whatever path brought it."""

from __future__ import annotations

from vpartcollect.output.ledger import Ledger


def test_a_second_sample_of_a_tick_is_refused() -> None:
    ledger = Ledger(keep=4)
    assert ledger.admit("a", 100.0)
    assert not ledger.admit("a", 100.0)  # a replay, a reconnect, a flag then an answer
    assert ledger.admit("b", 100.0)  # another domain: its own ticks
    assert ledger.admit("a", 101.0)


def test_late_ticks_are_admitted_once_while_remembered() -> None:
    ledger = Ledger(keep=3)
    for tick in (100.0, 102.0, 103.0, 104.0):
        assert ledger.admit("a", tick)
    assert not ledger.admit("a", 101.0)  # older than all three kept: cannot tell, refused
    ledger = Ledger(keep=4)
    for tick in (100.0, 102.0, 103.0):
        assert ledger.admit("a", tick)
    assert ledger.admit("a", 101.0)  # a tick a retagged domain's old partition replays
    assert not ledger.admit("a", 101.0)
    assert ledger.admit("a", 104.0)


def test_forgotten_domains_take_no_memory() -> None:
    ledger = Ledger(keep=8)
    for i in range(1000):
        ledger.admit(f"d{i}", 100.0)
    ledger.forget(f"d{i}" for i in range(999))
    assert ledger.tracked() == 1


def test_after_a_step_back_the_new_clocks_older_ticks_are_admitted_once() -> None:
    ledger = Ledger(keep=3)
    for tick in (7200.0, 7201.0, 7202.0):
        assert ledger.admit("a", tick)
    assert not ledger.admit("a", 3601.0)  # on one clock: older than all kept, refused
    ledger.new_era()  # the wall clock stepped an hour back
    for tick in (3601.0, 3602.0, 3603.0, 3604.0):
        assert ledger.admit("a", tick)
    assert not ledger.admit("a", 3603.0)
    assert not ledger.admit("a", 7202.0)  # a late replay of the old clock: written already
    assert ledger.tracked() == 1
    ledger.forget(["a"])
    assert ledger.tracked() == 0
