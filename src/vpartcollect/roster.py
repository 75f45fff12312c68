"""What the supervisor knows of each domain between ticks, and forgets with it.

Names (for log lines), tags and labels (handed to a new worker so it need not
read every domain's metadata again), interfaces (so a worker respawned while
libvirtd does not answer reads its predecessor's domains' counters from the kernel
until it does) and suspects (domains whose call hung and that have not been seen
healthy since; sent with each tick so the worker checks their monitor).
Everything here is pruned together with the rate state.
"""

from __future__ import annotations

from collections.abc import Iterable

from vpartcollect.samples import DomainSample

Interfaces = list[tuple[str, bool]]  # (host device or "", is a tap), in the XML's order
# uuid -> (name, tag, label, interfaces or None when not known)
Seed = dict[str, tuple[str, str | None, str | None, Interfaces | None]]


class Roster:
    """Per-domain knowledge of the supervisor, keyed by uuid."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.tags: dict[str, tuple[str | None, str | None]] = {}  # uuid -> (tag, label)
        self.interfaces: dict[str, Interfaces] = {}  # as the domain's worker last said
        self.suspects: dict[int, set[str]] = {}  # instance -> its suspects

    def seen(self, instance: int, sample: DomainSample) -> None:
        """A worker delivered this domain's sample."""
        self.names[sample.uuid] = sample.name
        self.tags[sample.uuid] = (sample.tag, sample.label)
        if sample.interfaces is not None:  # sent when new or changed only
            self.interfaces[sample.uuid] = sample.interfaces
        if not sample.unresponsive:
            self.suspects.get(instance, set()).discard(sample.uuid)

    def suspect(self, instance: int, uuids: Iterable[str]) -> None:
        """These domains were in a call that hung."""
        self.suspects.setdefault(instance, set()).update(uuids)

    def suspects_of(self, instance: int) -> list[str]:
        """The suspects of one instance, sorted (as a tick carries them)."""
        return sorted(self.suspects.get(instance, ()))

    def name(self, uuid: str) -> str:
        """The domain's name if known, else its uuid."""
        return self.names.get(uuid, uuid)

    def seed(self) -> Seed:
        """What a new worker starts from: every domain's name, tag, label and interfaces."""
        return {uuid: (self.names.get(uuid, uuid), tag, label, self.interfaces.get(uuid))
                for uuid, (tag, label) in self.tags.items()}

    def forget_tags(self) -> None:
        """The tags were read under settings that changed (a reload)."""
        self.tags = {}

    def forget(self, gone: set[str]) -> None:
        """Domains not sampled for long: drop them everywhere."""
        for table in (self.names, self.tags, self.interfaces):
            for uuid in gone & table.keys():
                del table[uuid]
        for suspects in self.suspects.values():
            suspects -= gone

    def size(self) -> int:
        """Domains held in the largest table."""
        return max(len(self.names), len(self.tags), len(self.interfaces),
                   sum(len(s) for s in self.suspects.values()))
