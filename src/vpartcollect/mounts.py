"""What is mounted where, as a process sees it: /proc/<pid>/mounts and mountinfo. Pure.

Both ``tag --auto`` (which storage backend a disk lives on) and the worker's
datastore probes (which filesystem must answer before QEMU is asked for block
info) need it. A mount point can carry several mounts stacked on each other
(autofs, then the NFS export it triggered); the one listed last is on top, and
it is the one a path reaches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One mounted filesystem: what, where, its type, and (from mountinfo) its device."""

    source: str
    target: str
    fstype: str
    dev: str = ""  # "major:minor": one per filesystem, whatever namespace it is seen from
    options: str = ""  # the filesystem's own (super) options, from mountinfo

    @property
    def store(self) -> str:
        """The datastore this mount is: its device when known, else its mount point."""
        return f"dev:{self.dev}" if self.dev else self.target


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def read_mounts(text: str) -> list[Mount]:
    """Parse /proc/<pid>/mounts (octal escapes like \\040 decoded)."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append(Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2]))
    return mounts


def read_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/<pid>/mountinfo: ``id parent major:minor root target opts [tags] - type
    source superopts``; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        mounts.append(Mount(_unescape(rest[1]), _unescape(fields[4]), rest[0], fields[2],
                            rest[2] if len(rest) > 2 else ""))
    return mounts


def mount_of(path: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount a path lives on: the longest mount point that is a prefix of ``path``,
    and of mounts stacked on that point the last listed (the one on top)."""
    best: Mount | None = None
    for m in mounts:
        prefix = m.target.rstrip("/") + "/"
        if (path.startswith(prefix) or m.target == "/") and (
                best is None or len(m.target) >= len(best.target)):
            best = m
    return best
