"""The Prometheus exporter started again: a real collector on the test driver, its real
exporter processes, scrapes over HTTP.

An exporter killed (or replaced by a reload that changes its settings) used to start
with an empty board: until the next tick every scrape found no domain, and Prometheus
marked every series stale. And the reload SIGTERMed the old exporter, cutting the
scrape it was answering. The oracle of the first is the scrape before: every series
it had is in the first scrape of the new exporter, with the same value and tick stamp
(or a later tick's)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import tagged_node
from promlab import fetch, free_port
from runner import children, cli_popen, no_traceback

DOMAINS = 900  # a scrape of ~5 MB: more than the kernel buffers for a slow client (4 MB)
Stamped = dict[str, tuple[float, int | None]]


def stamped(text: str) -> Stamped:
    """series (name and labels) -> (value, tick stamp in ms or None), from the text format."""
    out: Stamped = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if "}" in line:
            key, rest = line.rsplit("} ", 1)
            key += "}"
        else:
            key, rest = line.split(" ", 1)
        fields = rest.split()
        out[key] = (float(fields[0]), int(fields[1]) if len(fields) > 1 else None)
    return out


def lost(before: Stamped, after: Stamped) -> list[str]:
    """Series of ``before`` that ``after`` lacks, or has with an older or other value
    of the same tick."""
    wrong = []
    for key, (value, stamp) in before.items():
        got = after.get(key)
        if got is None:
            wrong.append(f"{key}: gone")
        elif stamp is not None and (got[1] is None or got[1] < stamp
                                    or (got[1] == stamp and got[0] != value)):
            wrong.append(f"{key}: {value} @{stamp}, now {got[0]} @{got[1]}")
    return wrong


def when_full(url: str, seconds: float = 90) -> str:
    """The first scrape with every domain and every instance's tick (a substring test:
    parsing 5 MB every poll would take a core from the other tests' labs)."""
    limit = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError):
            text = fetch(url)
            if f"libvirt_domains_number {DOMAINS}.0\n" in text and "libvirt_up 1.0\n" in text:
                return text
        assert time.monotonic() < limit, "not every domain in time"
        time.sleep(0.5)


def queued(local: int, remote: int) -> tuple[int, int]:
    """(bytes written and not yet acknowledged, bytes received and not yet read) of the
    loopback TCP socket from port ``local`` to ``remote`` (the kernel's /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{local:04X}") and fields[2].endswith(f":{remote:04X}"):
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no socket {local} -> {remote}")


def exporters(pid: int) -> list[int]:
    """The collector's exporter processes (``vpc prometheus`` in their command line)."""
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if "prometheus" in Path(f"/proc/{child}/cmdline").read_text():
                found.append(child)
    return found


def new_exporter(proc: subprocess.Popen[str], old: list[int], seconds: float = 20) -> int:
    """The pid of an exporter that is not one of ``old``, once there is one."""
    limit = time.monotonic() + seconds
    while True:
        fresh = [pid for pid in exporters(proc.pid) if pid not in old]
        if fresh:
            return fresh[0]
        assert time.monotonic() < limit and proc.poll() is None, "no new exporter"
        time.sleep(0.05)


@contextlib.contextmanager
def collector(tmp_path: Path, instances: int) -> Iterator[tuple[subprocess.Popen[str], str,
                                                                Path]]:
    """A collector of DOMAINS test-driver domains (tagged virt-0, virt-1, virt-2 in turn),
    a tick every 30 s (no tick comes between a scrape and the next), stamps on."""
    uri = tagged_node(tmp_path / "node.xml", [f"virt-{i % 3}" for i in range(DOMAINS)])
    port = free_port()
    conf = tmp_path / "vp.toml"

    def write(n: int) -> None:
        conf.write_text(f'interval = 30\ninstances = {n}\nprometheus = "127.0.0.1:{port}"\n'
                        "prometheus_timestamps = true\n")

    write(instances)
    proc = cli_popen("run", "-c", str(conf), "--connect", uri, "--no-stdout",
                     "--graphite", "127.0.0.1:9")
    try:
        yield proc, f"http://127.0.0.1:{port}/metrics", conf
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        no_traceback(err)


def test_an_exporter_killed_serves_every_domain_of_the_last_tick_at_once(
        tmp_path: Path) -> None:
    """Before: the first scrape after the kill had 0 domains (libvirt_up 0 too)."""
    with collector(tmp_path, 2) as (proc, url, _conf):
        before = stamped(when_full(url))
        old = exporters(proc.pid)
        assert len(old) == 1
        os.kill(old[0], signal.SIGKILL)
        new_exporter(proc, old)
        after = stamped(fetch(url))  # waits in the listening queue until it accepts
    assert after["libvirt_domains_number"][0] == DOMAINS
    assert after["libvirt_up"][0] == 1  # the replayed ticks are as recent as they were
    wrong = lost(before, after)
    assert not wrong, (len(wrong), wrong[:5])


def test_a_reload_that_restarts_the_exporter_loses_no_series_nor_the_scrape_in_flight(
        tmp_path: Path) -> None:
    """A SIGHUP from 2 instances to 3 (new settings: a new exporter). A slow scraper
    asked before it and reads its answer after: the old exporter finishes it (before:
    SIGTERMed mid-answer, the body short of its Content-Length). The first scrape of the
    new exporter has every series of the last one (before: no domain)."""
    with collector(tmp_path, 2) as (proc, url, conf):
        before = stamped(when_full(url))
        old = exporters(proc.pid)
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        slow.settimeout(30)
        port = int(url.split(":")[2].split("/")[0])
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += slow.recv(1024)
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
        length = int(next(line.split(b":")[1] for line in data.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        time.sleep(0.5)  # every buffer on the way full
        mine = slow.getsockname()[1]
        unwritten = (length + data.index(b"\r\n\r\n") + 4 - len(data)
                     - queued(mine, port)[1] - queued(port, mine)[0])
        assert unwritten > 0, f"premise: the exporter is still writing the answer ({length})"
        conf.write_text(conf.read_text().replace("instances = 2", "instances = 3"))
        proc.send_signal(signal.SIGHUP)
        new_exporter(proc, old)
        after = stamped(fetch(url))
        time.sleep(1.0)  # the old exporter would have been SIGTERMed by now
        while chunk := slow.recv(1 << 16):
            data += chunk
        slow.close()
        read = time.monotonic()
        while old[0] in exporters(proc.pid):
            # Drained, it exits by itself: at once (the supervisor's SIGKILL comes 15 s
            # after the SIGHUP, at least 12 s after this)
            assert time.monotonic() < read + 3, "the old exporter did not exit"
            time.sleep(0.1)
    body = data.partition(b"\r\n\r\n")[2]
    print(f"slow scrape: {length} bytes, {unwritten} of them not yet written at the SIGHUP")
    assert len(body) == length, f"{len(body)} of {length} bytes"
    assert stamped(body.decode())["libvirt_domains_number"][0] == DOMAINS
    assert after["libvirt_domains_number"][0] == DOMAINS
    wrong = lost(before, after)
    assert not wrong, (len(wrong), wrong[:5])


pytestmark = pytest.mark.slow
