"""The soak's checks themselves: they fail on the answers they were written to reject.

Pure: an Outcome built from numbers (a QEMU at 7 ms of cpu a second, as the lab's settle
at), no collector run.
"""

from __future__ import annotations

import pytest
from soak import MIN_BUSY_SAMPLES, MIN_STEADY_TICKS, CpuTruth, Outcome

RATE = 7e6  # ns of cpu a second: a settled tiny QEMU
T0 = 1_000_000


def outcome(ours: dict[int, float], busy: list[tuple[float, int]] | None = None) -> Outcome:
    """virt_cpu_total of domain "d" at the given ticks; /proc's account says RATE."""
    truth = CpuTruth({"d": 0})
    truth.readings["d"] = [(T0 + k / 10, RATE * k / 10) for k in range(0, 700)]
    lines = [("d.virt.virt_cpu_total", v, float(ts)) for ts, v in ours.items()]
    return Outcome(lines, "", busy or [], 0.0, truth=truth)


def steady(n: int = 40, factor: float = 1.0) -> dict[int, float]:
    return {T0 + k: RATE * factor for k in range(2, 2 + n)}


def test_true_rates_pass() -> None:
    assert outcome(steady()).cpu_errors(["d"]) == []


@pytest.mark.parametrize("factor", [0.4, 1.7, 0.0])
def test_one_tick_of_a_late_answers_size_fails(factor: float) -> None:
    """A late answer rated from when it was handed on was 0.4-1.7x the truth; the old
    bound (0.3x + 3 ms/s: 1.9-12.1 ms/s here) let 0.4x and 1.7x through."""
    ours = steady()
    ours[T0 + 20] = RATE * factor
    wrong = outcome(ours).cpu_errors(["d"])
    assert [(d, ts) for d, ts, _, _ in wrong] == [("d", T0 + 20)]


def test_a_burst_right_after_a_tick_read_late_passes() -> None:
    """Seen in a run beside other work: a QEMU's burst (40 ms of cpu 100-200 ms after a
    tick) and our read of that tick 300 ms late. Our rate over the tick after it is
    then 0.15x of /proc's over [tick + 20 ms, next tick + 20 ms], and the tick's own
    5x, yet both true over the spans read. A steady 0.4x still fails (above)."""
    ours = steady()
    truth = CpuTruth({"d": 0})
    burst = 4e7
    truth.readings["d"] = [(T0 + k / 10, RATE * k / 10 + (burst if k >= 202 else 0.0))
                           for k in range(0, 700)]
    # reads at T0 + 19.02, 20.3, 21.02: the burst (20.1-20.2 s) is in tick 20's span
    ours[T0 + 20] = RATE + burst / 1.28
    ours[T0 + 21] = RATE
    out = Outcome([("d.virt.virt_cpu_total", v, float(ts)) for ts, v in ours.items()],
                  "", [], 0.0, truth=truth)
    assert out.cpu_errors(["d"]) == []


@pytest.mark.parametrize("said", [True, False])
def test_a_read_late_after_a_slow_call_is_held_to_the_span_the_collector_says(
        said: bool) -> None:
    """r25: o-14's read came after a 1.45 s stats call, beside a burst of its cpu; ours
    0.24x /proc's over spans ending 0.3 s after the tick. Here tick 20 is read at
    20.6 s, after a burst at 20.4 s: true when the collector says its calls took 0.6 s
    that tick, and both ticks off when it does not (the read could not have been so late)."""
    truth = CpuTruth({"d": 0})
    burst = 4e7
    truth.readings["d"] = [(T0 + k / 10, RATE * k / 10 + (burst if k >= 204 else 0.0))
                           for k in range(0, 700)]
    ours = steady()
    ours[T0 + 20] = (RATE * 1.58 + burst) / 1.58  # reads at 19.02 and 20.6
    ours[T0 + 21] = RATE  # 20.6 to 21.02
    lines = [("d.virt.virt_cpu_total", v, float(ts)) for ts, v in ours.items()]
    if said:
        lines.append(("h.vpartcollect-virt-0.libvirtd_seconds-stats_max", 0.6, T0 + 20.0))
    wrong = Outcome(lines, "", [], 0.0, truth=truth).cpu_errors(["d"])
    assert [(d, ts) for d, ts, _, _ in wrong] == ([] if said else [("d", T0 + 20), ("d", T0 + 21)])


def test_a_bias_within_the_per_tick_band_fails_on_the_mean() -> None:
    wrong = outcome(steady(factor=1.08)).cpu_errors(["d"])
    assert {(d, ts) for d, ts, _, _ in wrong} == {("d", -1), ("all", -1)}


def test_assert_cpu_true_names_the_wrong_tick_and_passes_true_rates() -> None:
    outcome(steady()).assert_cpu_true(["d"])
    ours = steady()
    ours[T0 + 20] = RATE * 0.4
    with pytest.raises(AssertionError, match=rf"off the kernel's.*\('d', {T0 + 20},"):
        outcome(ours).assert_cpu_true(["d"])


def test_too_few_steady_ticks_is_no_pass() -> None:
    with pytest.raises(AssertionError, match="steady ticks"):
        outcome(steady(MIN_STEADY_TICKS - 1)).cpu_errors(["d"])


def test_ticks_near_an_event_are_left_out() -> None:
    ours = steady()
    ours[T0 + 20] = 0.0  # a freeze there
    assert outcome(ours).cpu_errors(["d"], [T0 + 20.5]) == []


def test_a_thread_count_needs_readings_behind_it() -> None:
    every_quarter = [(k / 4, 0) for k in range(0, 80)]
    assert outcome(steady(), every_quarter).held_threads(0, 20) == 0
    held = [(at, 2) for at, _ in every_quarter]
    assert outcome(steady(), held).held_threads(0, 20) == 2
    gap = [(at, b) for at, b in every_quarter if not 8 <= at < 12]  # virt-admin failing
    with pytest.raises(AssertionError, match=f"need {MIN_BUSY_SAMPLES}"):
        outcome(steady(), gap).held_threads(0, 20)
