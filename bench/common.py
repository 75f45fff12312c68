"""Helpers shared by the benchmarks: process CPU and memory from /proc, running the CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import PrivateLibvirtd, session_members  # noqa: E402  (tests/ is on the path only now)

# ExtraStats that need every libvirt bulk stats group and no per-domain call: the
# figures compare with one raw bulk call for all groups (the default asks for fewer).
ALL_GROUPS = ("cpu_util disk domain_state pcpu vcpu memory perf disk_allocation "
              "disk_capacity disk_physical")
# The ExtraStats behind shared/reference's paths (vcpupin and disk_err: a call per domain).
REFERENCE_EXTRA = ("cpu_util disk disk_err domain_state pcpu vcpupin disk_allocation "
                   "disk_capacity disk_physical memory")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB, from smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        values[key] = int(value.split()[0])
    return values["Rss"], values["Pss"]


def start_collector(*args: str, stdout: IO[bytes] | int = subprocess.DEVNULL,
                    src: str | None = None) -> subprocess.Popen[bytes]:
    """``vpartcollect run ARGS`` in its own session (``src``: another checkout's source
    directory, first on its path: an A/B against that version)."""
    env = {**os.environ, "PYTHONPATH": src} if src else None
    return subprocess.Popen([sys.executable, "-m", "vpartcollect", "run", *args],
                            stdout=stdout, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)


def session_cpu(sid: int) -> float:
    """CPU seconds of every live process of a session."""
    total = 0.0
    for pid in session_members(sid):
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def wait_for_aligned_start(interval: float) -> None:
    """Sleep to just after the next multiple of ``interval`` (cycles start there)."""
    now = time.time()
    time.sleep((interval - now % interval) + 0.05)


@contextlib.contextmanager
def qemu_lab(domains: int) -> Iterator[PrivateLibvirtd]:
    """The test suite's private libvirtd with ``domains`` tiny QEMU domains tagged over
    four instances, each with a tap device; stopped (domains and all) on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        daemon = PrivateLibvirtd(Path(tmp)).start()
        try:
            for i in range(domains):
                daemon.create(f"bench-{i}", f"virt-{i % 4}", nic=f"lb{i}")
            time.sleep(3)  # past their start-up
            yield daemon
        finally:
            daemon.stop()
