"""The exporter's state: each domain's last complete sample, and the collector's own values.

Pure bookkeeping, fed in order by the supervisor's frames: a sample replaces the
domain's last one (the whole sample: a hung domain's block values of an earlier
tick never stay); when an instance finishes a tick, its domains that tick did not
sample are dropped (gone, or handed to another instance).
"""

from __future__ import annotations

from vpartcollect.health import HealthValue
from vpartcollect.output.prometheus.families import Entry
from vpartcollect.samples import DomainSample


class Board:
    """Last samples by uuid, with the instance that sent each."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, Entry]] = {}
        self.instances: dict[str, tuple[dict[str, float], float]] = {}
        self.health: dict[str, tuple[list[HealthValue], float]] = {}  # by partition
        self.collector: tuple[dict[str, float], float] | None = None
        self.done_at: dict[int, float] = {}  # instance -> monotonic time of its last tick
        self.version = 0  # bumped by every change of what a scrape shows

    def sample(self, instance: int, tick: float, sample: DomainSample) -> None:
        """A domain's sample for ``tick``: an older tick's never replaces a newer one."""
        had = self.entries.get(sample.uuid)
        if had is not None and had[1].tick > tick:
            return
        self.entries[sample.uuid] = (instance, Entry(sample, tick))
        self.version += 1

    def done(self, instance: int, tick: float, values: dict[str, float], now: float,
             health: list[HealthValue] | None = None) -> None:
        """``instance`` finished ``tick``: what it did not sample then is gone; ``health``:
        what its worker saw of the host's health (replacing the last)."""
        self.instances[f"virt-{instance}"] = (values, tick)
        self.health[f"virt-{instance}"] = (health or [], tick)
        self.version += 1
        self.done_at[instance] = now
        stale = [uuid for uuid, (inst, entry) in self.entries.items()
                 if inst == instance and entry.tick < tick]
        for uuid in stale:
            del self.entries[uuid]

    def collector_values(self, values: dict[str, float], tick: float) -> None:
        """The collector-wide values of a tick that began."""
        self.collector = (values, tick)
        self.version += 1

    def snapshot(self) -> list[Entry]:
        """The entries, sorted by domain name (a stable scrape)."""
        return sorted((e for _, e in self.entries.values()),
                      key=lambda e: (e.sample.name, e.sample.uuid))

    def up(self, now: float, instances: int, within: float) -> bool:
        """Every instance finished a tick in the last ``within`` seconds."""
        return all(now - self.done_at.get(i, -1e18) <= within for i in range(instances))
