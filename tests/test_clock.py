"""Steps of the wall clock, told from slewing by the wall-minus-monotonic offset."""

from __future__ import annotations

from vpartcollect.clock import STEP_TOLERANCE, ClockWatch, stepped


def test_a_jump_of_the_offset_is_a_step_a_drift_is_not() -> None:
    assert not stepped(1000.0004, 1000.0)  # NTP slewing: 0.4 ms over a second
    assert not stepped(1000.0 + STEP_TOLERANCE, 1000.0)
    assert stepped(1000.0 - 3600, 1000.0) and stepped(1000.0 + 2.5, 1000.0)


def test_the_watch_reports_each_step_once_and_follows_slewing() -> None:
    watch = ClockWatch(wall=1_700_000_000.0, mono=100.0)
    assert watch.step(1_700_000_010.0, 110.0) == 0.0  # both moved alike
    # Slewing 0.5 ms a second for an hour: 1.8 s in all, never a step, since each
    # reading is compared with the one before.
    wall, mono = 1_700_000_010.0, 110.0
    for _ in range(360):
        wall, mono = wall + 10.0005, mono + 10.0
        assert watch.step(wall, mono) == 0.0
    step = watch.step(wall + 1.0 - 3600, mono + 1.0)  # `date -s` an hour back
    assert abs(step + 3600) < 1e-6
    assert watch.step(wall + 2.0 - 3600, mono + 2.0) == 0.0  # reported once
    assert abs(watch.step(wall + 3.0, mono + 3.0) - 3600) < 1e-6  # set right again
