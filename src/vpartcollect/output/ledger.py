"""At most one sample per domain and tick, whichever path made it. Pure.

Samples reach the supervisor by several paths: a worker's regular cycle, its
second ask, a respawned worker's replay of the tick its predecessor died in, a
reconnect in the middle of a tick, a domain that moves to another partition
between two tag reads. Carbon keeps one value per path and timestamp, the last
written, so a second sample of a (domain, tick) would silently overwrite the
first: an ``unresponsive 1`` by a later ``0``, a rate by another. The ledger
remembers the ticks emitted for each domain (the last ``keep`` of them: a
worker replays at most its backlog) and drops, counting them, the samples of
any (domain, tick) already emitted, or too old to tell.

"Too old" holds within one wall clock: after a step back (clock.py) every new tick is
older than the remembered ones. At a step the ledger starts a new era: the ticks of the
era before are still never admitted again, and order is judged within the new one.
"""

from __future__ import annotations

from collections.abc import Iterable


class Ledger:
    """Which (domain, tick) pairs were emitted, for the recent ticks of each domain."""

    def __init__(self, keep: int) -> None:
        self.keep = max(2, keep)
        self._ticks: dict[str, tuple[float, ...]] = {}  # uuid -> recent ticks, ascending
        self._before: dict[str, frozenset[float]] = {}  # uuid -> its ticks of the era before

    def admit(self, uuid: str, tick: float) -> bool:
        """True (and remembered) when ``tick`` is the first sample of ``uuid`` for it;
        False for a second one, or for one older than every tick remembered when the
        memory of that domain is full (it may have been emitted: never write it twice)."""
        seen = self._ticks.get(uuid, ())
        if tick in seen or (self._before and tick in self._before.get(uuid, ())):
            return False
        if len(seen) >= self.keep and tick < seen[0]:
            return False
        in_order = not seen or tick > seen[-1]
        ticks = (*seen, tick) if in_order else tuple(sorted((*seen, tick)))
        self._ticks[uuid] = ticks[-self.keep:]
        return True

    def new_era(self) -> None:
        """The wall clock stepped: ticks of the new clock may be older than every tick
        remembered (a step back) and are admitted; those remembered stay refused (a
        worker may still replay one). Two steps within ``keep`` ticks forget the
        oldest era's."""
        self._before = {uuid: frozenset(ticks) for uuid, ticks in self._ticks.items()}
        self._ticks = {}

    def emitted(self, tick: float) -> list[str]:
        """The domains whose sample for ``tick`` was emitted (what a replay of it skips)."""
        return [uuid for uuid in self._ticks.keys() | self._before.keys()
                if tick in self._ticks.get(uuid, ()) or tick in self._before.get(uuid, ())]

    def forget(self, uuids: Iterable[str]) -> None:
        """Domains not sampled for long: nothing of theirs can come back as a duplicate."""
        for uuid in uuids:
            self._ticks.pop(uuid, None)
            self._before.pop(uuid, None)

    def tracked(self) -> int:
        """How many domains the ledger remembers."""
        if not self._before:
            return len(self._ticks)
        return len(self._ticks.keys() | self._before.keys())
