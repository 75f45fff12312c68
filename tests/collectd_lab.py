"""The side-by-side lab with collectd 5.12: four QEMU domains with disks of every kind,
collectd's configuration around a virt block, and reading what carbon stored."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from carbon import PrivateCarbon

COLLECTD_HEAD = """Hostname "parity"
FQDNLookup false
Interval 2
BaseDir "{base}"
PIDFile "{base}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File "{base}/collectd.log"
</Plugin>
LoadPlugin virt
LoadPlugin write_graphite
"""


def settle(pids: dict[str, int], timeout: float = 90.0) -> None:
    """Wait until every QEMU has left its boot burst (its BIOS keeps a CPU ~50 % busy for
    ~10 s, then idles at a few %), so that the compared window is steady: collectd's
    points carry its read time cut to the second, and a window off by a second during
    the burst moves a mean rate by half."""
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        before = {d: qemu_cpu_seconds(p) for d, p in pids.items()}
        time.sleep(1.0)
        if all(qemu_cpu_seconds(p) - before[d] < 0.1 for d, p in pids.items()):
            return
    pytest.fail(f"QEMUs still busy after {timeout:.0f} s: {pids}")


def qemu_cpu_seconds(pid: int) -> float:
    """utime + stime of a QEMU process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # USER_HZ is 100 on Linux


def series(carbon: PrivateCarbon, path: str, start: int, end: int) -> list[tuple[int, float]]:
    return sorted(carbon.fetch(path, start, end).items())


def paired(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> list[tuple[float, float]]:
    """Values of ``a`` and ``b`` taken within a second of each other."""
    return [(va, vb) for ta, va in a for tb, vb in b if abs(ta - tb) <= 1]
