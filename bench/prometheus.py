"""The Prometheus endpoint's cost and isolation (libvirt's test driver, every stats group).

    .venv/bin/python bench/prometheus.py [--domains 1000] [--scrapes 100]
        [--abuse-domains 200] [--seconds 15] [--rounds 1] [--src DIR]

1. A scrape of ``--domains`` domains: response time (p50, p99) and the exporter
   process's CPU per scrape, over ``--scrapes`` scrapes one after another.
2. Abuse: 100 connections that send nothing and one client sending a megabyte of
   headers again and again, for ``--seconds``, against the same time without them:
   how late each cycle's last Graphite line comes (cycle timestamp -> last line on
   stdout) and how long a well-behaved scrape takes meanwhile; ``--rounds`` quiet and
   abused phases alternate (the machine's other load falls on both alike).

``--src DIR``: run another checkout's source (an A/B against that version).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import ALL_GROUPS, cpu_seconds, start_collector
from latency import percentile
from nodes import tagged_node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        body: bytes = resp.read()
    return time.perf_counter() - start, body


def exporter_pid(port: int, supervisor: int) -> int:
    """The process serving ``port`` other than the supervisor (which holds it too)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout
    pids = {int(p.split(",")[0]) for p in out.split("pid=")[1:]}
    (pid,) = pids - {supervisor}
    return pid


def wait_full(url: str, domains: int) -> None:
    needle = f"libvirt_domains_number {domains:.1f}".encode()
    for _ in range(600):
        try:
            if needle in scrape(url)[1]:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"never {domains} domains at {url}")


def cost(domains: int, scrapes: int, tmp: Path, src: str | None) -> None:
    uri = tagged_node(tmp / "big.xml", [f"virt-{i % 4}" for i in range(domains)], "vm-")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_collector("--connect", uri, "--interval", "10", "--instances", "4",
                           "--extra-stats", ALL_GROUPS, "--prometheus", f"127.0.0.1:{port}",
                           src=src)
    try:
        wait_full(url, domains)
        pid = exporter_pid(port, proc.pid)
        times, size = [], 0
        before = cpu_seconds(pid)
        for _ in range(scrapes):
            took, body = scrape(url)
            times.append(took * 1000)
            size = len(body)
        per = (cpu_seconds(pid) - before) / scrapes * 1000
    finally:
        proc.terminate()
        proc.wait()
    print(f"{domains} test-driver domains, every stats group: {size / 1e6:.1f} MB a scrape, "
          f"response p50 {percentile(times, 50):.0f} ms, p99 {percentile(times, 99):.0f} ms; "
          f"exporter CPU {per:.0f} ms per scrape ({scrapes} scrapes)")


def idle_and_header_abuse(port: int, stop: threading.Event) -> None:
    """100 silent connections, and a client sending 1 MB of headers over and over."""
    silent = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", port))
        silent.append(sock)

    def headers() -> None:
        junk = b"GET /metrics HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 1000 + b"\r\n"
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(junk)
                    for _ in range(1000):
                        sock.sendall(b"X-More: " + b"b" * 1000 + b"\r\n")
            except OSError:
                pass
    thread = threading.Thread(target=headers, daemon=True)
    thread.start()
    stop.wait()
    thread.join()
    for sock in silent:
        sock.close()


def isolation(domains: int, seconds: float, rounds: int, tmp: Path,
              src: str | None) -> None:
    uri = tagged_node(tmp / "abuse.xml", [f"virt-{i % 4}" for i in range(domains)], "vm-")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_collector("--connect", uri, "--interval", "1", "--instances", "4",
                           "--prometheus", f"127.0.0.1:{port}", "--stdout",
                           stdout=subprocess.PIPE, src=src)
    assert proc.stdout is not None
    last: dict[float, float] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            last[float(line.rsplit(b" ", 1)[1])] = time.time()
    threading.Thread(target=read, daemon=True).start()
    phases: list[tuple[str, float, float, list[float]]] = []
    try:
        wait_full(url, domains)
        for phase in ("quiet", "abused") * rounds:
            stop = threading.Event()
            abuser = threading.Thread(target=idle_and_header_abuse, args=(port, stop))
            if phase == "abused":
                abuser.start()
                time.sleep(0.5)
            start, scrapes = time.time(), []
            while time.time() - start < seconds:
                scrapes.append(scrape(url)[0] * 1000)
                time.sleep(0.2)
            phases.append((phase, start, time.time(), scrapes))
            stop.set()
            if abuser.is_alive():
                abuser.join()
    finally:
        proc.terminate()
        proc.wait()
    for phase in ("quiet", "abused"):
        delays, scrapes = [], []
        for name, start, end, took in phases:
            if name == phase:
                delays += [(last[ts] - ts) * 1000 for ts in sorted(last)
                           if start + 1 < ts < end - 1]
                scrapes += took
        print(f"{phase:6}: cycle -> last Graphite line p50 {percentile(delays, 50):.0f} ms, "
              f"p99 {percentile(delays, 99):.0f} ms, max {max(delays):.0f} ms "
              f"({len(delays)} cycles); a scrape of {domains} domains p50 "
              f"{percentile(scrapes, 50):.0f} ms, p99 {percentile(scrapes, 99):.0f} ms, "
              f"max {max(scrapes):.0f} ms ({len(scrapes)} scrapes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=100)
    parser.add_argument("--abuse-domains", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0, help="of each phase")
    parser.add_argument("--rounds", type=int, default=1,
                        help="quiet and abused phases, alternating")
    parser.add_argument("--src", help="another checkout's source directory (A/B)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.scrapes:  # --scrapes 0: the isolation part only
            cost(args.domains, args.scrapes, Path(tmp), args.src)
        isolation(args.abuse_domains, args.seconds, args.rounds, Path(tmp), args.src)


if __name__ == "__main__":
    main()
