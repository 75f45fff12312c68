"""What a worker samples: one domain's raw statistics for one tick (the data, not its codec)."""

from __future__ import annotations

from dataclasses import dataclass

StatValue = int | float | str
Stats = dict[str, StatValue]  # keyed like virConnectGetAllDomainStats: "block.0.rd.bytes"


@dataclass(frozen=True)
class DomainSample:
    """One domain's raw statistics for one tick, keyed like virConnectGetAllDomainStats.

    ``read_at`` is when libvirt answered (wall clock, just before the call returned),
    not when the sample was handed on: rates divide by the time between two reads.
    A sample with no statistics (``stats`` empty) only says ``unresponsive``.
    """

    uuid: str
    name: str
    tag: str | None
    unresponsive: bool
    stats: Stats
    read_at: float
    label: str | None = None  # the metadata value a hostname_format may name
