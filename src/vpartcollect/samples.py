"""What a worker samples: one domain's raw statistics for one tick (the data, not its codec)."""

from __future__ import annotations

from dataclasses import dataclass

StatValue = int | float | str
Stats = dict[str, StatValue]  # keyed like virConnectGetAllDomainStats: "block.0.rd.bytes"


@dataclass(frozen=True)
class DomainSample:
    """One domain's raw statistics for one tick, keyed like virConnectGetAllDomainStats.

    ``read_at`` is when libvirt answered (wall clock, just after the call returned),
    not when the sample was handed on; ``read_mono`` is the same moment on the host's
    monotonic clock (None: the same as ``read_at``, a clock that never stepped). Rates
    divide by the monotonic time between two reads, and give none across a step of the
    wall clock (the two clocks' difference moved: rates.py).
    A sample with no statistics (``stats`` empty) only says ``unresponsive``.
    ``interfaces``: see the field; what the supervisor keeps of them is roster.py's.
    """

    uuid: str
    name: str
    tag: str | None
    unresponsive: bool
    stats: Stats
    read_at: float
    label: str | None = None  # the metadata value a hostname_format may name
    read_mono: float | None = None
    # The domain's interfaces (host device, is a tap), sent when the worker first knows
    # them or they change (else None): the roster a successor's kernel reader starts from.
    interfaces: list[tuple[str, bool]] | None = None

    @property
    def monotonic(self) -> float:
        """When it was read, on the monotonic clock."""
        return self.read_at if self.read_mono is None else self.read_mono
