"""Workers killed from outside (an operator, the OOM killer) cost next to no sample."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections import defaultdict

import pytest
from harness import PrivateLibvirtd
from oracle import check_truth
from runner import DEMO_URI, children, run_during
from soak import CpuTruth, Outcome

KILL_EVERY = 2.0
KILLING = 30.0


def kill_workers(uri: str) -> tuple[int, list[tuple[str, float, float]], range, str]:
    """Run 4 instances at 1 s; SIGKILL a random worker every 2 s for 30 s.

    Returns (kills, the lines written, the ticks of the killing, stderr).
    """
    rng = random.Random(7)

    def kill(proc: subprocess.Popen[str]) -> tuple[int, float, float]:
        kills = 0
        time.sleep(3)
        first = time.time()
        while time.time() - first < KILLING:
            workers = children(proc.pid)
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
                kills += 1
            time.sleep(KILL_EVERY)
        last = time.time()
        time.sleep(3)  # let the last replay land
        return kills, first, last

    lines, stderr, (kills, first, last) = run_during(
        ["run", "--connect", uri, "--instances", "4", "--interval", "1"], kill)
    return kills, lines, range(int(first) + 1, int(last)), stderr


def rated_ticks(lines: list[tuple[str, float, float]], ticks: range) -> dict[str, set[int]]:
    """Per domain, the ticks of ``ticks`` at which it has a cpu rate."""
    rated: dict[str, set[int]] = defaultdict(set)
    for path, _value, ts in lines:
        if path.endswith(".virt.virt_cpu_total") and int(ts) in ticks:
            rated[path.split(".")[0]].add(int(ts))
    return rated


def check(kills: int, lines: list[tuple[str, float, float]], ticks: range, stderr: str,
          domains: int) -> None:
    """A cpu rate at 98 % of the ticks for every domain; no backoff for workers that worked."""
    assert kills >= KILLING / KILL_EVERY - 1
    rated = rated_ticks(lines, ticks)
    assert len(rated) == domains, rated
    worst = min(len(r) for r in rated.values()) / len(ticks)
    print(f"{kills} kills; worst domain has a cpu rate at {worst:.0%} of {len(ticks)} ticks")
    assert worst >= 0.98, {d: sorted(set(ticks) - r) for d, r in rated.items()}
    # A worker that had done work is back at once: no backoff for it.
    assert re.search(r"restarting in (?!0\.0 s)", stderr) is None, stderr


@pytest.mark.slow
def test_random_worker_sigkilled_every_2s_test_driver() -> None:
    """On the test driver, every rate must also be the truth: 1e9 ns/s."""
    kills, lines, ticks, stderr = kill_workers(DEMO_URI)
    check(kills, lines, ticks, stderr, domains=10)
    check_truth(lines, stderr, [])


@pytest.mark.libvirtd
def test_random_worker_sigkilled_every_2s_real_libvirtd(libvirtd: PrivateLibvirtd) -> None:
    """On real QEMU, every rate against /proc's account of each QEMU."""
    with CpuTruth({n: libvirtd.qemu_pid(n) for n in libvirtd.domains}) as truth:
        kills, lines, ticks, stderr = kill_workers(libvirtd.uri)
    check(kills, lines, ticks, stderr, domains=6)
    out = Outcome(lines, stderr, [], 0.0, truth=truth)
    out.assert_cpu_true(libvirtd.domains)
