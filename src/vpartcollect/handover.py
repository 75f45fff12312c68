"""A reload that replaces the workers, without losing or doubling a tick of any domain.

Workers carry the configuration they were forked with, so a reload that changes
what a worker does (the instance count, the URI, include/exclude ...) replaces
every one of them, and domains may move to another partition. The old
generation retires: a worker in a tick finishes it under the rule it started
it with (its control pipe is closed, so it exits once done; the watchdog still
holds it to its deadlines), an idle one is killed at once. The new generation
connects meanwhile and gets no tick until the old one is gone; then each new
worker first replays every tick the old generation owed (the one it was in, the
ones waiting), skipping the domains already written for it (the ledger knows
them), and goes on with the next ticks. A domain sampled by an old worker is
never asked again for that tick; a domain an old worker dropped (it moved, its
worker was killed) is sampled by its new owner.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from vpartcollect import wire
from vpartcollect.slot import Slot


def retire(slot: Slot) -> set[float]:
    """Give ``slot`` no more ticks; return the ticks it owed (current and waiting).

    A worker in a tick finishes it and exits when it finds its control pipe closed;
    an idle one holds nothing and is killed at once."""
    owed = {t.ts for t in slot.pending}
    slot.pending.clear()
    if slot.current is not None:
        owed.add(slot.current.ts)
    slot.close_ctl()
    if slot.pid and slot.current is None:
        slot.kill(hung=False)
    return owed


def successor(index: int, old: Iterable[Slot]) -> Slot:
    """A new slot for instance ``index``, keeping the counters its predecessor reported
    (watchdog kills, respawns, missed ticks are totals per instance)."""
    slot = Slot(index)
    for before in old:
        if before.index == index:
            slot.kills, slot.spawned = before.kills, before.spawned
            slot.missed_ticks = before.missed_ticks
    return slot


def replay(slot: Slot, owed: Iterable[float], emitted: Callable[[float], list[str]],
           backlog: int, may_own: Callable[[str], bool] = lambda _uuid: True) -> None:
    """Put the ticks the old generation owed ahead of the ones ``slot`` waits for, each
    skipping the domains already written for it; beyond ``backlog`` the oldest go
    (counted in missed_ticks).

    A skip list names only the domains ``may_own`` says the slot's worker may sample:
    the worker only drops its own domains with it (the whole host's list, 3000 domains,
    is ~114 KB to send; a worker's own part may still be more than a pipe holds, which
    outbox.py sends without blocking)."""
    waiting = {t.ts: t for t in slot.pending}
    for ts in owed:
        waiting[ts] = wire.Tick(ts, sorted({u for u in emitted(ts) if may_own(u)} | set(
            waiting[ts].skip if ts in waiting else ())))
    ordered = [waiting[ts] for ts in sorted(waiting)]
    dropped = max(0, len(ordered) - backlog)
    slot.pending = deque(ordered[dropped:])
    slot.missed_ticks += dropped
