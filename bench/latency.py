"""From a cycle's timestamp to its last line on stdout: p50 and p99 (test driver).

    .venv/bin/python bench/latency.py [--domains 200] [--instances 4] [--seconds 30]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts tests/ on the path)
from nodes import tagged_node


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    last: dict[float, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = tagged_node(Path(tmp) / "node.xml",
                          [f"virt-{i % args.instances}" for i in range(args.domains)], "vm-")
        proc = subprocess.Popen([sys.executable, "-m", "vpartcollect", "run", "--connect", uri,
                                 "--interval", "1", "--instances", str(args.instances)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        end = time.time() + args.seconds
        for line in proc.stdout:
            ts = float(line.rsplit(b" ", 1)[1])
            last[ts] = time.time()
            if time.time() > end:
                break
        proc.send_signal(signal.SIGTERM)
        proc.stdout.close()  # nobody reads any more: let it see that
        proc.wait()
    stamps = sorted(last)[1:-1]  # the first and last cycle may be partial
    delays = [(last[ts] - ts) * 1000 for ts in stamps]
    print(f"{args.domains} test-driver domains, {args.instances} instances, interval 1 s, "
          f"{len(stamps)} cycles")
    print(f"cycle timestamp -> last line written: p50 {percentile(delays, 50):.1f} ms, "
          f"p99 {percentile(delays, 99):.1f} ms, max {max(delays):.1f} ms")


if __name__ == "__main__":
    main()
