"""Graphite destinations given by name: a dead resolver delays no tick; every address is tried.

Each collector runs in a private mount namespace with its own /etc/resolv.conf and
/etc/hosts, so the host's resolver is never touched.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from carbon import PrivateCarbon
from runner import COLLECTOR, DEMO_URI, no_traceback, parse_lines

pytestmark = [
    pytest.mark.carbon,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                       reason="needs root and unshare for a private /etc/resolv.conf"),
]



@pytest.fixture
def dead_dns() -> Iterator[str]:
    """FAKE DNS server: a bound UDP socket nobody reads, so every query goes unanswered
    (a real server cannot be made to go silent on demand; one that is merely absent
    answers at once with ICMP "port unreachable")."""
    # A loopback address of its own (resolv.conf has no port): another run on this host
    # (a second checkout, a parallel worker) may hold any fixed one.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(50):
        address = f"127.53.{random.randrange(256)}.{random.randrange(1, 255)}"
        try:
            sock.bind((address, 53))
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free loopback address for the silent resolver")
    try:
        yield address
    finally:
        sock.close()


def namespaced(tmp: Path, hosts: str, nameserver: str, *args: str) -> list[str]:
    """``vpartcollect ARGS`` in a private mount namespace with these hosts and resolver."""
    (tmp / "hosts").write_text(f"127.0.0.1 localhost\n{hosts}")
    (tmp / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:3 attempts:1\n")
    script = (f"mount --bind {tmp}/resolv.conf /etc/resolv.conf && "
              f"mount --bind {tmp}/hosts /etc/hosts && exec \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            *COLLECTOR, *args]


def run_timed(argv: list[str], seconds: float) -> tuple[list[tuple[float, str]], str, int]:
    """Run ``argv`` for ``seconds``, then SIGTERM; stdout lines with their arrival times."""
    arrivals: list[tuple[float, str]] = []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            for line in stdout:
                arrivals.append((time.time(), line.rstrip("\n")))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(seconds)
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        reader.join(10)
        err.seek(0)
        return arrivals, err.read(), code


def test_a_resolver_that_never_answers_delays_no_tick(tmp_path: Path, dead_dns: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("flush_timeout = 1\n")
    argv = namespaced(tmp_path, "", dead_dns, "run", "-c", str(conf), "--connect", DEMO_URI,
                      "--instances", "2", "--interval", "1", "--stdout",
                      "--graphite", "carbon.dns.test:2003")
    arrivals, stderr, code = run_timed(argv, 10)
    assert code == 0, stderr
    no_traceback(stderr)
    lines = [(at, *parse_lines(text)[0]) for at, text in arrivals]
    stamps = sorted({int(ts) for _, _, _, ts in lines})
    assert len(stamps) >= 8 and stamps == list(range(stamps[0], stamps[-1] + 1)), stamps
    # Each lookup waits 3 s for the silent server; none of that may reach the ticks.
    late = max(at - ts for at, path, _, ts in lines if ".virt." in path)
    assert late < 2.0, f"a tick came out {late:.1f} s after its time"
    failures = [ln for ln in stderr.splitlines() if "cannot resolve carbon.dns.test" in ln]
    assert len(failures) == 1, stderr  # once per outage, not per attempt
    assert "lines not sent before exit" in stderr


def test_every_address_of_a_name_is_tried(tmp_path: Path, dead_dns: str) -> None:
    # The name's first address (::1) has no carbon; the second (127.0.0.1) has.
    carbon = PrivateCarbon(tmp_path / "carbon").start()
    try:
        argv = namespaced(tmp_path, "::1 carbon.dual.test\n127.0.0.1 carbon.dual.test\n",
                          dead_dns, "run", "--once", "--connect", DEMO_URI, "--stdout",
                          "--graphite", f"carbon.dual.test:{carbon.port}")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        no_traceback(proc.stderr)
        lines = parse_lines(proc.stdout)
        assert lines
        carbon.settle(lines)
    finally:
        carbon.stop()
    assert carbon.missing(lines) == []
