"""RSS and PSS of the supervisor and each worker (test driver, 8 instances).

    .venv/bin/python bench/memory.py [--instances 8] [--domains 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from common import ALL_GROUPS, memory_kib, start_collector
from harness import session_members
from nodes import tagged_node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--domains", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = tagged_node(Path(tmp) / "node.xml",
                          [f"virt-{i % args.instances}" for i in range(args.domains)], "vm-")
        proc = start_collector("--connect", uri, "--interval", "1", "--extra-stats", ALL_GROUPS,
                               "--instances", str(args.instances))
        time.sleep(8)
        rows = {pid: memory_kib(pid) for pid in session_members(proc.pid)}
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    parent = rows.pop(proc.pid)
    print(f"{args.domains} test-driver domains, {args.instances} instances, after 8 s at 1 s")
    print(f"supervisor: RSS {parent[0] / 1024:.1f} MiB, PSS {parent[1] / 1024:.1f} MiB")
    for pid, (rss, pss) in sorted(rows.items()):
        print(f"worker {pid}: RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB")
    worker_pss = [p for _, p in rows.values()]
    print(f"PSS per worker: {min(worker_pss) / 1024:.1f}-{max(worker_pss) / 1024:.1f} MiB "
          "(target <= 10)")
    total = parent[1] + sum(worker_pss)
    print(f"total PSS: {total / 1024:.1f} MiB on a host with "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB")


if __name__ == "__main__":
    main()
