"""Deadline, backoff and backlog arithmetic."""

from __future__ import annotations

from vpartcollect.watchdog import (
    backlog_limit,
    call_deadline,
    kill_deadline,
    respawn_delay,
    unread_deadline,
)


def test_deadline_scales_with_the_chunk() -> None:
    assert call_deadline(1.0, 0) == 1.0
    assert call_deadline(1.0, 200) > call_deadline(1.0, 20) > call_deadline(1.0, 0)


def test_respawn_backoff_is_capped_exponential() -> None:
    delays = [respawn_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0  # first death: respawn at once
    assert delays[1:5] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == 30.0 and delays == sorted(delays)


def test_backlog_covers_one_stall() -> None:
    # A chunk stuck until its deadline plus a reconnect must not cost a tick.
    assert backlog_limit(2.0, 1.0, 32) >= (1.0 + 0.05 * 32 + 1.0) / 2.0 + 1
    assert backlog_limit(10.0, 5.0, 1) >= 2


def test_a_tick_left_unread_is_a_hang_past_the_backstop() -> None:
    # An idle worker reads its tick at once: not having read it after a call's timeout
    # and the backstop is what a call past its deadline is.
    assert unread_deadline(1.0) == kill_deadline(1.0, 0)
    assert unread_deadline(0.2) < unread_deadline(5.0)
