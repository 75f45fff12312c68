"""10,000 short-lived domains through a running collector: nothing per domain is kept.

The domains are libvirt test-driver domains served by a private libvirtd
(test+unix://), so they can be created and destroyed from outside while the
collector watches, as on a host where VMs come and go.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from harness import PrivateLibvirtd
from nodes import domain_xml
from runner import children, cli_popen, no_traceback, parse_lines

pytestmark = pytest.mark.libvirtd

CHURNED = 10_000
LIVE = 300  # domains alive at any time: each lives about two seconds
# The collector forgets a domain FORGET s after its last sample (forget_after; 10
# intervals of 1 s is the floor), checking every FORGET / 4 s: all are gone FORGET * 1.25
# plus a tick after the last was destroyed. The test waits until its tracked_domains
# says so (then a tick more for the memory), at most twice that.
FORGET = 10
SETTLE = 2 * (FORGET * 1.25 + 1)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Tail:
    """The collector's stdout as it grows: complete lines only, each read once."""

    def __init__(self, fd: int) -> None:
        self.fd, self.offset = fd, 0

    def tracked(self) -> list[float]:
        """The tracked_domains values written since the last look."""
        data = b""
        while chunk := os.pread(self.fd, 1 << 22, self.offset + len(data)):
            data += chunk
        data = data[:data.rfind(b"\n") + 1]
        self.offset += len(data)
        mine = b"\n".join(line for line in data.split(b"\n")
                           if b".vpartcollect.tracked_domains " in line)
        return [v for _, v, _ in parse_lines(mine.decode())]


def forgotten(tail: Tail, seconds: float) -> None:
    """Wait until the collector tracks only the driver's own domain, at most ``seconds``
    (the asserts afterwards say what was left)."""
    limit = time.monotonic() + seconds
    tail.tracked()  # what was written while the domains lived
    while time.monotonic() < limit:
        if any(v <= 1 for v in tail.tracked()):
            time.sleep(1.5)  # a tick more: the memory the prune freed is handed back
            return
        time.sleep(0.5)


def churn(conn: libvirt.virConnect, first: int, count: int) -> None:
    """Create ``count`` domains at ~150 a second, each destroyed after about 2 s."""
    live: deque[libvirt.virDomain] = deque()
    started = time.monotonic()
    for n, i in enumerate(range(first, first + count)):
        tag = f"virt-{i % 4}" if i % 5 else None
        live.append(conn.createXML(domain_xml(f"churn-{i:05d}", 0x10000 + i, tag), 0))
        if len(live) > LIVE:
            live.popleft().destroy()
        time.sleep(max(0.0, started + (n + 1) / 150 - time.monotonic()))
    while live:
        live.popleft().destroy()


@pytest.fixture
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """A libvirtd of its own for the test driver alone: none of the session lab's QEMU
    domains are needed, so this runs beside that lab's tests (another xdist group)."""
    own = PrivateLibvirtd(tmp_path_factory.mktemp("churnd"))  # short: socket paths
    try:
        yield own.start()
    finally:
        own.stop()


def test_churned_domains_leave_no_state_behind(daemon: PrivateLibvirtd,
                                               tmp_path: Path) -> None:
    uri = daemon.test_uri
    conn = libvirt.open(uri)
    rounds = []
    conf = tmp_path / "c.toml"
    conf.write_text(f"forget_after = {FORGET}\n")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = cli_popen("run", "--config", str(conf), "--connect", uri, "--instances", "4",
                         "--interval", "1", "--log-level", "info", stdout=out, stderr=err)
        try:
            tail = Tail(out.fileno())
            time.sleep(4)
            pids = [proc.pid, *children(proc.pid)]
            before = {pid: rss_kib(pid) for pid in pids}
            for first in (0, CHURNED // 2):  # two rounds: the second must reuse, not grow
                churn(conn, first, CHURNED // 2)
                peak = {pid: rss_kib(pid) for pid in pids}
                forgotten(tail, SETTLE)  # the FORGET s after which a domain is forgotten
                rounds.append((peak, {pid: rss_kib(pid) for pid in pids}))
            workers_now = children(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            conn.close()
        out.seek(0)
        err.seek(0)
        lines, stderr = parse_lines(out.read()), err.read()
    no_traceback(stderr)
    churned = {p.split(".")[0] for p, _, _ in lines if p.startswith("churn-")}
    assert len(churned) >= 0.95 * CHURNED  # they really went through the collector
    tracked = [(ts, v) for p, v, ts in lines if p.endswith("vpartcollect.tracked_domains")]
    sup = proc.pid
    print(f"tracked_domains peak {max(v for _, v in tracked):.0f}, last {tracked[-1][1]:.0f}; "
          f"supervisor RSS KiB: before {before[sup]}, "
          + ", ".join(f"round {n + 1} peak {p[sup]} after {a[sup]}"
                      for n, (p, a) in enumerate(rounds)))
    assert max(v for _, v in tracked) > 1000  # half a minute of churn is held...
    assert tracked[-1][1] <= 1  # ...and forgotten: only the driver's own "test" domain is left
    assert "forgot " in stderr
    assert workers_now == pids[1:]  # same workers all along: none was restarted
    (peak1, after1), (peak2, after2) = rounds
    # The supervisor's memory comes down after each round, and the second round reuses
    # what the first freed (CPython keeps freed memory for reuse rather than returning
    # all of it): no growth from one round to the next, so nothing leaks per domain.
    assert after1[sup] < peak1[sup] and after2[sup] < peak2[sup], rounds
    assert peak2[sup] <= peak1[sup] + 8 * 1024, rounds
    assert after2[sup] <= after1[sup] + 8 * 1024, rounds
    for pid in pids[1:]:  # workers hold next to nothing per domain
        assert after2[pid] - before[pid] < 16 * 1024, (pid, before, rounds)
