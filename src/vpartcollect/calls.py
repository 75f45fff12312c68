"""The kinds of libvirt call a worker announces before making it (Busy frames).

Shared by the worker (which announces), the watchdog (whose deadlines depend on
the kind) and the supervisor (which suspects the domains of a hung call only
when the call involved their QEMU).
"""

from __future__ import annotations

import enum


class CallKind(enum.Enum):
    """A call that may block in libvirtd."""

    CONNECT = "connect"  # open a connection and probe the driver's stats groups
    LIST = "list"  # listAllDomains
    DESCRIBE = "describe"  # tags and devices of new or stale domains
    STATS = "stats"  # statistics of a chunk of domains (bulk NOWAIT, or per domain)
    FROZEN = "frozen"  # what libvirtd answers without the monitor, for frozen QEMUs
    CLOSE = "close"  # closing a connection a stuck call held

    @property
    def involves_qemu(self) -> bool:
        """Whether a hang of this call says something about the domains' QEMUs (a hung
        listing or tag read does not: it waits on libvirtd's own locks)."""
        return self in (CallKind.STATS, CallKind.FROZEN)

    @property
    def needs_monitor(self) -> bool:
        """Whether the call may wait on a QEMU's monitor, so a QEMU freezing hangs it
        (FROZEN's calls need the domain's lock only, the listing libvirtd's own)."""
        return self is CallKind.STATS
