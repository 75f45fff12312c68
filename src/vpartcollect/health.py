"""The host's health as one worker saw it in one tick: what its datastores, its QEMUs and
libvirtd did. Pure; shared by the worker (which measures) and the supervisor (which writes
each value under the collector's own host name, plugin instance ``virt-N``).

A value is (type, type instance, number), as collectd would name it:

- ``datastore_answering-<store>``: 1 when the datastore's last probe answered in time,
  0 while it is out; ``datastore_silent_seconds-<store>``: seconds since it last
  answered (0 while it answers). ``<store>`` as ``tag --auto`` names a network
  filesystem (``nfs:server:/export``), else the mount point QEMU sees.
- ``frozen_qemus-<why>``: QEMUs of this instance judged frozen this tick, by why:
  ``stopped`` (SIGSTOP), ``filesystem`` (asleep on a filesystem request), ``d_state``
  (uninterruptible sleep elsewhere), and ``all``.
- ``libvirtd_seconds-<call>_p50`` and ``_max``: how long libvirtd took to answer the
  calls of each kind this tick (calls.py's kinds: list, describe, stats, frozen); a call
  abandoned at its deadline counts the time it was waited for.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

HealthValue = tuple[str, str, float]  # (type, type instance, value)

DATASTORE_ANSWERING = "datastore_answering"
DATASTORE_SILENT = "datastore_silent_seconds"
FROZEN = "frozen_qemus"
LIBVIRTD_SECONDS = "libvirtd_seconds"
TYPES = frozenset((DATASTORE_ANSWERING, DATASTORE_SILENT, FROZEN, LIBVIRTD_SECONDS))
FROZEN_WHY = ("stopped", "filesystem", "d_state")


def p50(values: Sequence[float]) -> float:
    """The median (the lower middle one of an even count: a value that was seen)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


# The longest health instance a worker's frame may carry (wire checks it with this): a
# longer datastore name is clipped so that it stays one value, distinct from the others.
MAX_INSTANCE_CHARS = 256
_CLIP_KEEP = 240


def instance_name(name: str) -> str:
    """``name``, or when longer than MAX_INSTANCE_CHARS its first 240 characters, ``~`` and
    12 hex digits of its SHA-1 (two long names alike at the start stay apart)."""
    if len(name) <= MAX_INSTANCE_CHARS:
        return name
    return f"{name[:_CLIP_KEEP]}~{hashlib.sha1(name.encode(errors='replace')).hexdigest()[:12]}"


def health_values(stores: Mapping[str, tuple[bool, float]],
                  frozen_why: Iterable[str],
                  calls: Mapping[str, Sequence[float]]) -> list[HealthValue]:
    """The values of one tick: ``stores``: {name: (answering, seconds silent)};
    ``frozen_why``: why each QEMU found frozen is (FROZEN_WHY); ``calls``: {call kind:
    the seconds each call of it took}."""
    out: list[HealthValue] = []
    for long_name, (answering, silent) in sorted(stores.items()):
        name = instance_name(long_name)  # a longer one made every Done frame invalid
        out.append((DATASTORE_ANSWERING, name, 1 if answering else 0))
        out.append((DATASTORE_SILENT, name, round(silent, 3)))
    counts = dict.fromkeys(FROZEN_WHY, 0)
    for why in frozen_why:
        counts[why] = counts.get(why, 0) + 1
    out += [(FROZEN, why, n) for why, n in counts.items()]
    out.append((FROZEN, "all", sum(counts.values())))
    for kind, seconds in sorted(calls.items()):
        if seconds:
            out.append((LIBVIRTD_SECONDS, f"{kind}_p50", round(p50(seconds), 6)))
            out.append((LIBVIRTD_SECONDS, f"{kind}_max", round(max(seconds), 6)))
    return out


def valid(value: HealthValue, max_chars: int) -> str | None:
    """Why one value (from a worker's pipe: outside input) cannot be written, or None."""
    typ, inst, number = value
    if typ not in TYPES:
        return f"unknown health type {typ[:40]!r}"
    if not 0 < len(inst) <= max_chars:
        return f"health instance of {len(inst)} characters (1-{max_chars})"
    if not math.isfinite(number) or number < 0:
        return f"health value {number!r}: expected a finite number >= 0"
    return None
