"""Host CPU per cycle, collector + libvirtd, against the raw libvirt floor (real QEMU, root).

    .venv/bin/python bench/host_cost.py [--domains 20] [--seconds 30] [--rounds 1]

Starts the test suite's private libvirtd with tiny QEMU domains, then measures,
each for the same time at a 1 s interval: the floor (one process doing
listAllDomains, metadata and one bulk NOWAIT stats call per cycle and nothing
else), the same loop asking only the groups the kernel cannot give (what libvirtd
must still do for any client) and vpartcollect asking for every group too, with 1
and 4 instances, each with its kernel reader (cpu, vCPU and interface counters read
from the kernel, not asked) and without. CPU counts the client processes and
libvirtd, not QEMU, and says libvirtd's share. Where collectd is installed
(Debian's collectd-core), its virt plugin (4 instances, the ExtraStats behind
shared/reference's paths) is measured the same way beside it.

    .venv/bin/python bench/host_cost.py --against /path/to/other/src [--rounds 3]

A/B instead: 4 instances with the kernel reader, this checkout (with ``vcpu_delay``
too: the health values and the vCPU delay are what issue 27 added) and the other
checkout's source directory (main's, say), measured alternately on the same lab.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    ALL_GROUPS,
    cpu_seconds,
    qemu_lab,
    session_cpu,
    start_collector,
    wait_for_aligned_start,
)
from harness import PrivateLibvirtd

from vpartcollect.kernel_counters import KERNEL_GROUPS
from vpartcollect.worker.libvirt_stats import GROUPS

FLOOR = """
import sys, time, libvirt
from vpartcollect.worker.libvirt_stats import GROUPS
conn = libvirt.openReadOnly(sys.argv[1])
bits = 0
for name, bit in GROUPS.items():
    if name in sys.argv[3].split(","):
        bits |= bit
end = time.time() + float(sys.argv[2])
while time.time() < end:
    doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    for d in doms:
        d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "http://ovirt.org/ovirtmap/tag/1.0")
    conn.domainListGetStats(doms, bits, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
    time.sleep(1 - time.time() % 1)
"""

# What a worker checks before asking libvirt, each cycle, for the same domains: QEMU's
# main thread in /proc and one stat() per datastore on a thread of its own.
CHECKS = """
import sys, time, libvirt
from pathlib import Path
from vpartcollect.mounts import read_mounts
from vpartcollect.worker.datastores import Probes, datastores
from vpartcollect.worker.qemu_proc import QemuProcesses
conn = libvirt.openReadOnly(sys.argv[1])
doms = [(d.UUIDString(), d.name()) for d in
        conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
images = [sys.argv[3] + "/" + name + ".qcow2" for _, name in doms]
conn.close()
qemu = QemuProcesses(pid_dir=Path(sys.argv[4]))
probes = Probes(1.0)
stores = datastores(images, read_mounts(Path("/proc/self/mounts").read_text()))
end = time.time() + float(sys.argv[2])
while time.time() < end:
    probes.start(stores)  # a worker keeps each domain's datastores between cycles
    frozen = qemu.frozen(doms)
    probes.settle()
    assert not frozen and not probes.dead()
    time.sleep(1 - time.time() % 1)
"""


COLLECTD_CONF = """Interval 1
FQDNLookup false
Hostname "bench"
ReadThreads 5
LoadPlugin virt
<Plugin virt>
  Connection "{uri}"
  Instances 4
  HostnameFormat name
  ExtraStats "cpu_util disk disk_err domain_state pcpu vcpupin disk_allocation \
disk_capacity disk_physical memory"
</Plugin>
"""

# What libvirtd must still be asked when the kernel reader gives cpu, vCPUs and
# interfaces: the same raw loop for these groups alone is the lowest any client can go.
QEMU_GROUPS = tuple(g for g in GROUPS if g not in KERNEL_GROUPS)
WARMUP = 5.0  # start-up (imports, connecting) is not what a cycle costs


def start_collectd(uri: str, tmp: Path) -> subprocess.Popen[bytes]:
    """collectd with only the virt plugin (values go nowhere: no write plugin)."""
    conf = tmp / "collectd.conf"
    conf.write_text(COLLECTD_CONF.format(uri=uri))
    return subprocess.Popen(["collectd", "-f", "-C", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


@dataclass
class Cost:
    """CPU seconds per 1 s cycle: the client processes', and libvirtd's."""

    client: float
    libvirtd: float

    @property
    def total(self) -> float:
        return self.client + self.libvirtd

    def __str__(self) -> str:
        return (f"{self.total * 1000:.1f} ms CPU per cycle (client {self.client * 1000:.1f}, "
                f"libvirtd {self.libvirtd * 1000:.1f} = {self.libvirtd / self.total:.0%})")


def start(daemon: PrivateLibvirtd, seconds: float, what: str | tuple[int, bool],
          src: str | None = None, extra: str = "") -> subprocess.Popen[bytes]:
    """The process whose cost is measured: the floor, nobody, the checks, collectd, or
    vpartcollect (instances, kernel reader on or off)."""
    until = str(seconds + WARMUP + 5)
    if what in ("floor", "qemu floor"):
        groups = QEMU_GROUPS if what == "qemu floor" else GROUPS
        return subprocess.Popen([sys.executable, "-c", FLOOR, daemon.uri, until,
                                 ",".join(groups)], start_new_session=True)
    if what == "idle":  # libvirtd and its QEMUs with nobody asking anything
        return subprocess.Popen(["sleep", until], start_new_session=True)
    if what == "checks":
        return subprocess.Popen([sys.executable, "-c", CHECKS, daemon.uri, until,
                                 str(daemon.base / "images"), str(daemon.base / "run" / "qemu")],
                                start_new_session=True)
    if what == "collectd":
        return start_collectd(daemon.uri, daemon.base)
    assert isinstance(what, tuple)
    instances, kernel = what
    return start_collector("--connect", daemon.uri, "--interval", "1", "--extra-stats",
                           f"{ALL_GROUPS} {extra}", "--instances", str(instances),
                           "--kernel-reader" if kernel else "--no-kernel-reader", src=src)


def measure(daemon: PrivateLibvirtd, seconds: float, what: str | tuple[int, bool],
            src: str | None = None, extra: str = "") -> Cost:
    """Client and libvirtd CPU per 1 s cycle, in the steady state."""
    proc = start(daemon, seconds, what, src, extra)
    time.sleep(WARMUP)
    wait_for_aligned_start(1.0)
    client, libvirtd = session_cpu(proc.pid), cpu_seconds(daemon.pid)
    time.sleep(seconds)
    cost = Cost((session_cpu(proc.pid) - client) / seconds,
                (cpu_seconds(daemon.pid) - libvirtd) / seconds)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the floors and our runs, each round against its own "
                        "floor (libvirtd's cost on one host drifts by a third between runs)")
    parser.add_argument("--against", metavar="SRC",
                        help="A/B against another checkout's src directory (see above)")
    args = parser.parse_args()
    if args.rounds < 1 or args.domains < 1 or args.seconds <= 0:
        parser.error("--rounds and --domains must be at least 1, --seconds above 0")
    if args.against:
        a_b(args.domains, args.seconds, args.rounds, args.against)
        return
    runs: list[tuple[int, bool]] = [(1, False), (1, True), (4, False), (4, True)]
    with qemu_lab(args.domains) as daemon:
        print(f"{args.domains} QEMU domains ({daemon.kind}), interval 1 s, {args.seconds:.0f} s "
              "each, every stats group", flush=True)
        floor = Cost(0.0, 0.0)
        for number in range(1, args.rounds + 1):
            floor = measure(daemon, args.seconds, "floor")
            qemu_floor = measure(daemon, args.seconds, "qemu floor")
            ours = {run: measure(daemon, args.seconds, run) for run in runs}
            print(f"round {number}: floor (list + metadata + one bulk NOWAIT call): {floor}")
            print(f"  the same loop for the groups the kernel cannot give "
                  f"({', '.join(QEMU_GROUPS)}): {qemu_floor} = "
                  f"{qemu_floor.total / floor.total:.2f}x the floor, libvirtd alone "
                  f"{qemu_floor.libvirtd / floor.total:.2f}x: no client asking for them goes "
                  "lower")
            for (n, kernel), cost in ours.items():
                path = "kernel reader" if kernel else "libvirtd only"
                print(f"  vpartcollect, {n} instance(s), {path}: {cost} = "
                      f"{cost.total / floor.total:.2f}x the floor", flush=True)
        idle = measure(daemon, args.seconds, "idle")
        checks = measure(daemon, args.seconds, "checks").total - idle.total
        collectd = (measure(daemon, args.seconds, "collectd")
                    if shutil.which("collectd") else None)
    # The checks' process asks libvirtd nothing after connecting: what it costs beyond an
    # idle libvirtd is theirs.
    print(f"libvirtd with nobody asking: {idle.total * 1000:.1f} ms CPU per cycle")
    print(f"frozen-QEMU and datastore checks alone, beyond that: {checks * 1000:.2f} ms CPU "
          f"per cycle = {checks / floor.total:.1%} of the last floor (target <= 5 %)")
    if collectd is not None:
        print(f"collectd virt plugin, 4 instances: {collectd} = "
              f"{collectd.total / floor.total:.2f}x the last floor")
    else:
        print("collectd: not installed (apt-get install collectd-core to compare)")


def a_b(domains: int, seconds: float, rounds: int, other: str) -> None:
    """This checkout against ``other``, alternately, each round in the other order."""
    mine: list[Cost] = []
    theirs: list[Cost] = []
    with qemu_lab(domains) as daemon:
        print(f"{domains} QEMU domains ({daemon.kind}), 4 instances, kernel reader, "
              f"{seconds:.0f} s each, this checkout (+ vcpu_delay) against {other}", flush=True)
        for number in range(rounds):
            order = [True, False] if number % 2 else [False, True]
            for ours in order:
                cost = (measure(daemon, seconds, (4, True), extra="vcpu_delay") if ours
                        else measure(daemon, seconds, (4, True), src=other))
                (mine if ours else theirs).append(cost)
                print(f"  round {number + 1}, {'this' if ours else 'other'}: {cost}", flush=True)
    a = sum(c.total for c in mine) / len(mine)
    b = sum(c.total for c in theirs) / len(theirs)
    print(f"this checkout: {a * 1000:.1f} ms CPU per cycle, the other {b * 1000:.1f}: "
          f"{a / b - 1:+.1%}")


if __name__ == "__main__":
    main()
