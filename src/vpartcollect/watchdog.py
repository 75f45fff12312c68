"""The watchdog's arithmetic: deadlines, respawn backoff, tick backlog. Pure functions."""

from __future__ import annotations

import math

from vpartcollect.backoff import backoff
from vpartcollect.calls import CallKind

# Measured: bulk NOWAIT stats cost 6-7 ms per QEMU domain here; allow ~8x that so a
# large healthy chunk on a loaded host is never mistaken for a hung one.
PER_DOMAIN_SECONDS = 0.05
# Opening a connection (and probing the driver) is slower than a stats call, and a
# libvirtd that is starting up may take seconds to answer: never kill for that alone.
CONNECT_SECONDS = 15.0
# A worker abandons a call at call_deadline itself (the call stays in libvirtd, counted);
# the supervisor kills only a worker still silent this much later: its last line of defence.
BACKSTOP_SECONDS = 5.0
RESPAWN_MIN = 0.5
RESPAWN_MAX = 30.0


def call_deadline(timeout: float, domains: int, kind: CallKind = CallKind.STATS) -> float:
    """Seconds a worker may spend in one announced call of ``kind`` over ``domains`` domains."""
    if kind is CallKind.CONNECT:
        return max(timeout, CONNECT_SECONDS)
    return timeout + PER_DOMAIN_SECONDS * domains


def kill_deadline(timeout: float, domains: int, kind: CallKind = CallKind.STATS) -> float:
    """Seconds the supervisor lets a worker stay in one announced call before killing it."""
    return call_deadline(timeout, domains, kind) + BACKSTOP_SECONDS


def unread_deadline(timeout: float) -> float:
    """Seconds a worker may leave part of a tick in its control pipe before it is killed.

    Ticks go only to an idle worker, which reads at once: one that has not taken its
    tick after a call's timeout and the backstop is stopped or stuck, like a worker past
    a call's deadline (and, unkilled, would never get another tick)."""
    return timeout + BACKSTOP_SECONDS


def respawn_delay(failures: int) -> float:
    """Backoff before respawning a worker that died ``failures`` times in a row, unhung."""
    if failures <= 1:
        return 0.0
    return backoff(failures - 2, RESPAWN_MIN, RESPAWN_MAX)


def backlog_limit(interval: float, timeout: float, chunk_size: int) -> int:
    """How many ticks may wait for one worker: all the ticks one stall can cover, plus one.

    A worker killed at its deadline comes back and collects every tick it missed
    meanwhile, so healthy domains of its partition arrive late, not never. More
    than that is a worker that cannot keep up, and its oldest ticks are dropped.
    """
    stall = kill_deadline(timeout, chunk_size) + timeout  # a hung chunk, then a reconnect
    return max(2, math.ceil(stall / interval) + 1)
