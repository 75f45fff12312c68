"""Issue 27: a VM's steal time (vCPU delay) against the kernel's own account, on real QEMU.

lab-0's vCPU thread is starved on purpose: pinned to CPU 0 beside a busy loop, and put
in SCHED_IDLE (it runs only when nothing else wants the core), so it waits runnable on
the run queue nearly all the time it wants to run. lab-1 is left alone. Two collectors
run over the same seconds with ``extra_stats = vcpu_delay``: one reading the vCPU threads
itself (the kernel reader), one asking libvirt (``--no-kernel-reader``: bulk
``vcpu.<n>.delay``, as for another host's libvirtd). The oracle is the second field of
the vCPU thread's ``/proc/<pid>/task/<tid>/schedstat``, read every 100 ms by the test.
"""

from __future__ import annotations

import bisect
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from harness import PrivateLibvirtd
from runner import run_during
from soak import READ_OFFSETS

from vpartcollect.kernel_counters import vcpu_number

pytestmark = pytest.mark.libvirtd

RUN_SECONDS = 14.0  # both runs overlap 5+ ticks after the settling ones, on a busy host too
SETTLE_TICKS = 3  # the first rates of a run: a domain's first span starts late in its tick
TOLERANCE = 0.10  # the issue's: within 10 % of schedstat over the same window
SLACK_NS = 1e6  # 1 ms/s: a vCPU that hardly waits has a band of its own size


def vcpu_thread(pid: int) -> int:
    """The tid of vCPU 0 of a QEMU process."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            if vcpu_number(fh.read()) == 0:
                return int(tid)
    raise AssertionError(f"QEMU {pid} has no vCPU 0 thread")


class DelayTruth:
    """Each vCPU thread's run-queue delay (schedstat field 2, ns), every 100 ms."""

    def __init__(self, threads: dict[str, tuple[int, int]]) -> None:
        self.threads = threads
        self.readings: dict[str, list[tuple[float, float]]] = {d: [] for d in threads}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DelayTruth:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for domain, (pid, tid) in self.threads.items():
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    self.readings[domain].append((time.time(), float(fh.read().split()[1])))

    def at(self, domain: str, ts: float) -> float:
        r = self.readings[domain]
        assert r[0][0] <= ts <= r[-1][0], (domain, ts)
        i = bisect.bisect_left(r, (ts, -1.0))
        (t0, v0), (t1, v1) = r[max(i - 1, 0)], r[i]
        return v0 if t1 == t0 else v0 + (v1 - v0) * (ts - t0) / (t1 - t0)

    def window_range(self, domain: str, first: int, last: int) -> tuple[float, float]:
        """Least and most delay rate over the ticks ``first``..``last`` (1 s each), the
        reads at either end landing anywhere in ``READ_OFFSETS`` after their ticks."""
        rates = [(self.at(domain, last + b) - self.at(domain, first - 1 + a))
                 / (last + b - first + 1 - a) for a in READ_OFFSETS for b in READ_OFFSETS]
        return min(rates), max(rates)


@pytest.fixture
def starved(libvirtd: PrivateLibvirtd) -> Iterator[dict[str, tuple[int, int]]]:
    """lab-0's vCPU starved (CPU 0 shared with a busy loop, SCHED_IDLE), lab-1's not:
    {domain: (QEMU pid, vCPU 0 tid)}. Put back as it was afterwards (a shared lab)."""
    threads = {d: (pid, vcpu_thread(pid)) for d in ("lab-0", "lab-1")
               if (pid := libvirtd.qemu_pid(d))}
    tid = threads["lab-0"][1]
    affinity = os.sched_getaffinity(tid)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(busy.pid, {0})
        os.sched_setaffinity(tid, {0})
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        yield threads
    finally:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        os.sched_setaffinity(tid, affinity)
        busy.kill()
        busy.wait()


def delay_rates(lines: list[tuple[str, float, float]], domain: str) -> dict[int, float]:
    path = f"{domain}.virt.virt_vcpu_delay-0"
    return {int(ts): v for p, v, ts in lines if p == path}


def test_a_starved_vcpus_delay_is_the_kernels(libvirtd: PrivateLibvirtd,
                                              starved: dict[str, tuple[int, int]]) -> None:
    args = ["run", "--connect", libvirtd.uri, "--interval", "1", "--extra-stats", "vcpu_delay"]
    with DelayTruth(starved) as truth:
        kernel, _, (libvirt, _, _) = run_during(
            [*args, "--kernel-reader"],
            lambda _: run_during([*args, "--no-kernel-reader"],
                                 lambda _: time.sleep(RUN_SECONDS)))
    for domain, lines in (("kernel", kernel), ("libvirt", libvirt)):
        names = {p.split(".", 2)[2] for p, _, _ in lines if p.startswith("lab-0.virt.virt_vcpu_")}
        assert names == {"virt_vcpu_delay-0", "virt_vcpu_wait-0", "virt_vcpu_delay_total",
                         "virt_vcpu_wait_total"}, (domain, names)
    results = {}
    for domain in ("lab-0", "lab-1"):
        ours = delay_rates(kernel, domain)
        theirs = delay_rates(libvirt, domain)
        ticks = sorted(set(ours) & set(theirs))[SETTLE_TICKS:-1]
        assert len(ticks) >= 5, (domain, sorted(ours), sorted(theirs))
        # Our rates are over the spans between reads, each landing a few ms after its
        # tick on a quiet host, a few hundred on a busy one: schedstat's least and most
        # over the window those ends allow (soak.READ_OFFSETS).
        results[domain] = (*truth.window_range(domain, ticks[0], ticks[-1]),
                           sum(ours[t] for t in ticks) / len(ticks),
                           sum(theirs[t] for t in ticks) / len(ticks))
    print("delay ns/s (schedstat least, most; kernel reader, libvirt):", results)
    for domain, (least, most, kernel_mean, libvirt_mean) in results.items():
        for mean in (kernel_mean, libvirt_mean):  # the kernel path; libvirt's vcpu.0.delay
            low, high = (1 - TOLERANCE) * least - SLACK_NS, (1 + TOLERANCE) * most + SLACK_NS
            assert low <= mean <= high, (domain, results)
    # The staging held: lab-0 starved. Not "lab-1 near 0": with the suite's other workers
    # on both cores lab-1 waits too (22 ms/s beside lab-0's 39 in one run; each matched its
    # schedstat), which is the host, not the metric.
    assert results["lab-0"][0] > 5e6, results
