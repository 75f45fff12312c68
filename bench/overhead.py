"""Collector CPU per emitted value, test driver with 1,000 domains (libvirt in-process).

    .venv/bin/python bench/overhead.py [--domains 1000] [--seconds 20]

Prints the collector's CPU per value and per cycle, the same cycle's raw libvirt
calls done by a bare loop (the floor), and their ratio.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

import libvirt
from common import ALL_GROUPS, session_cpu, start_collector, wait_for_aligned_start
from nodes import tagged_node

from vpartcollect.partition import TAG_NS


def floor_cpu_per_cycle(uri: str, cycles: int = 5) -> float:
    """CPU of the bare libvirt calls one cycle needs on the test driver."""
    conn = libvirt.openReadOnly(uri)
    start = time.process_time()
    for _ in range(cycles):
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, TAG_NS)
            dom.controlInfo()
            dom.state()
            dom.info()
            dom.memoryStats()
            dom.vcpus()
            dom.blockStats("vda")
            dom.blockInfo("vda")
        conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
    return (time.process_time() - start) / cycles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = tagged_node(Path(tmp) / "node.xml", [f"virt-{i % 4}" for i in range(args.domains)],
                          "vm-")
        floor = floor_cpu_per_cycle(uri)
        out_path = Path(tmp) / "out.txt"
        with open(out_path, "wb") as out:
            wait_for_aligned_start(1.0)
            proc = start_collector("--connect", uri, "--interval", "1", "--extra-stats",
                                   ALL_GROUPS, stdout=out)
            time.sleep(args.seconds)
            cpu = session_cpu(proc.pid)
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        lines = out_path.read_bytes().splitlines()
    cycles = len({line.rsplit(b" ", 1)[1] for line in lines})
    values = len(lines)
    print(f"domains: {args.domains}, interval 1 s, {args.seconds:.0f} s, instances 1")
    print(f"values written: {values} in {cycles} cycles")
    print(f"collector CPU: {cpu:.2f} s = {cpu / cycles * 1000:.0f} ms per cycle")
    print(f"collector CPU per value: {cpu / values * 1e6:.2f} us (target <= 5)")
    print(f"raw libvirt calls per cycle (floor): {floor * 1000:.0f} ms")
    print(f"ratio collector / floor: {cpu / cycles / floor:.2f}")


if __name__ == "__main__":
    main()
