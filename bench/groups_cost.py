"""libvirtd CPU per cycle by stats group: what choosing ExtraStats saves (real QEMU, root).

    .venv/bin/python bench/groups_cost.py [--domains 20] [--seconds 20]

Starts the test suite's private libvirtd with tiny QEMU domains and measures
libvirtd's own CPU per 1 s cycle (not the client's, not QEMU's) while one client
asks for: each bulk stats group alone (a bare loop, the raw call), every group,
and the groups collectd's default needs; then vpartcollect with the default
config (no extra_stats) and with every ExtraStats group, without and with its
kernel reader. Prints each in ms and vpartcollect's ratio to the raw call for
the same groups.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from common import REFERENCE_EXTRA, cpu_seconds, qemu_lab, start_collector, wait_for_aligned_start
from harness import PrivateLibvirtd

from vpartcollect.collectd_values import Selection, needed_groups, parse_extra_stats
from vpartcollect.worker.libvirt_stats import GROUPS

RAW = """
import sys, time, libvirt
from vpartcollect.worker.libvirt_stats import GROUPS
conn = libvirt.openReadOnly(sys.argv[1])
bits = 0
for name in sys.argv[3].split(","):
    bits |= GROUPS[name]
end = time.time() + float(sys.argv[2])
while time.time() < end:
    doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    conn.domainListGetStats(doms, bits, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)
    time.sleep(1 - time.time() % 1)
"""

WARMUP = 5.0


def libvirtd_cpu(daemon: PrivateLibvirtd, seconds: float,
                 proc: subprocess.Popen[bytes]) -> float:
    """libvirtd CPU seconds per second while ``proc`` runs, in the steady state."""
    time.sleep(WARMUP)
    wait_for_aligned_start(1.0)
    before = cpu_seconds(daemon.pid)
    time.sleep(seconds)
    after = cpu_seconds(daemon.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    return (after - before) / seconds


def raw(daemon: PrivateLibvirtd, seconds: float, groups: set[str] | list[str]) -> float:
    """libvirtd's CPU for a bare loop asking ``groups`` of every running domain."""
    proc = subprocess.Popen([sys.executable, "-c", RAW, daemon.uri, str(seconds + WARMUP + 5),
                             ",".join(groups)], start_new_session=True)
    return libvirtd_cpu(daemon, seconds, proc)


def ours(daemon: PrivateLibvirtd, seconds: float, extra: str | None, kernel: bool) -> float:
    """libvirtd's CPU while vpartcollect runs (default config or ``--extra-stats``), with
    or without its kernel reader."""
    args = ["--connect", daemon.uri, "--interval", "1",
            "--kernel-reader" if kernel else "--no-kernel-reader"]
    if extra is not None:
        args += ["--extra-stats", extra]
    return libvirtd_cpu(daemon, seconds, start_collector(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    default_groups = needed_groups(Selection(frozenset()))
    all_groups = needed_groups(Selection(parse_extra_stats(REFERENCE_EXTRA.split())))
    with qemu_lab(args.domains) as daemon:
        alone = {name: raw(daemon, args.seconds, [name]) for name in GROUPS}
        raw_default = raw(daemon, args.seconds, default_groups)
        raw_all = raw(daemon, args.seconds, all_groups)
        ours_default = ours(daemon, args.seconds, None, False)
        ours_all = ours(daemon, args.seconds, REFERENCE_EXTRA, False)
        kernel_default = ours(daemon, args.seconds, None, True)
        kernel_all = ours(daemon, args.seconds, REFERENCE_EXTRA, True)
    print(f"{args.domains} QEMU domains ({daemon.kind}), interval 1 s, {args.seconds:.0f} s each; "
          "libvirtd CPU per cycle")
    for name, cost in sorted(alone.items(), key=lambda kv: -kv[1]):
        print(f"  raw call, {name} alone: {cost * 1000:.1f} ms")
    print(f"raw call, default groups ({', '.join(sorted(default_groups))}): "
          f"{raw_default * 1000:.1f} ms")
    print(f"raw call, every group ({', '.join(sorted(all_groups))}): {raw_all * 1000:.1f} ms")
    print(f"vpartcollect, default config (no extra_stats): {ours_default * 1000:.1f} ms = "
          f"{ours_default / raw_default:.2f}x the raw call for its groups, "
          f"{ours_default / raw_all:.2f}x every group")
    print(f"vpartcollect, every ExtraStats group: {ours_all * 1000:.1f} ms = "
          f"{ours_all / raw_all:.2f}x the raw call for every group")
    print(f"with the kernel reader (cpu, vCPU, interface not asked): default config "
          f"{kernel_default * 1000:.1f} ms ({kernel_default / ours_default:.2f}x without it), "
          f"every ExtraStats group {kernel_all * 1000:.1f} ms "
          f"({kernel_all / ours_all:.2f}x without it)")


if __name__ == "__main__":
    main()
