"""A worker killed while libvirtd is stopped (the watchdog, an OOM kill, an operator):
its successor cannot list the domains, so it starts from the roster its predecessor left
with the supervisor. Beside the session's QEMU lab (lab-0..5, tagged virt-0,1,2,0,1,2),
at a 1 s interval, libvirtd SIGSTOPped for 12 s and virt-1's worker SIGKILLed 2 s into
it: lab-1 and lab-4 keep their cpu, vCPU and interface values at every tick, from the
respawn on and through the outage, their cpu rates /proc's; once libvirtd answers, what
only it gives is back, and no value is written twice for a tick.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import PrivateLibvirtd
from soak import KERNEL_METRICS, soak
from test_kernel_libvirtd import halt

pytestmark = pytest.mark.libvirtd

ALL = [f"lab-{i}" for i in range(6)]
VIRT_1 = ["lab-1", "lab-4"]
STOP_AT, STOP_FOR, KILL_AFTER, AFTER = 6.0, 12.0, 2.0, 6.0
ONLY_LIBVIRTD = ("memory-total", "disk_capacity-vda", "domain_state.state")


def worker_pid(instance: str, grandparent: int) -> int:
    """The pid of the worker titled ``vpc <instance>`` whose supervisor this process
    started (other collectors may run beside it)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().rstrip("\n")
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            above = int(Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if comm == f"vpc {instance}" and above == grandparent:
            return int(entry)
    raise AssertionError(f"no worker vpc {instance} under pid {grandparent}")


def test_worker_killed_while_libvirtd_is_stopped(libvirtd: PrivateLibvirtd) -> None:
    events: dict[str, float] = {}
    pytest_pid = os.getpid()
    halt_it = halt(libvirtd, STOP_FOR, events)

    def kill() -> None:
        pid = worker_pid("virt-1", pytest_pid)
        events["kill"] = time.time()
        os.kill(pid, signal.SIGKILL)

    def stop_then_kill() -> None:
        halt_it()
        # A timer: the soak's own libvirtd probe blocks while libvirtd is stopped.
        threading.Timer(KILL_AFTER, kill).start()

    out = soak(libvirtd, ["--instances", "3", "--extra-stats", "vcpu disk_capacity domain_state"],
               [(STOP_AT, stop_then_kill)], seconds=STOP_AT + STOP_FOR + AFTER)
    assert "kill" in events, "the worker was not killed"
    stopped, killed, resumed = int(events["stop"]) + 1, int(events["kill"]), int(events["cont"])
    respawned = [t for t in out.window() if killed + 1 < t < resumed]
    after = [t for t in out.window() if t > resumed + 3]
    assert len(respawned) >= STOP_FOR - KILL_AFTER - 3 and after, (respawned, after)
    missing = out.gaps(ALL, KERNEL_METRICS)
    print(f"\nvirt-1's worker killed {killed - stopped + 1} s into a {STOP_FOR:.0f} s stop: "
          f"kernel values missing at (ticks) {missing or 'none'}")
    assert not missing, f"{missing}\n{out.stderr[-3000:]}"
    for name in ALL:
        # What needs libvirtd is missing, not made up, while it is stopped, and comes back.
        for metric in ONLY_LIBVIRTD:
            stamps = out.stamps(name, metric)
            assert not any(stopped < t < resumed for t in stamps), (name, metric)
            assert all(t in stamps for t in after), (name, metric, sorted(stamps)[-5:])
        flagged = {t: v for t, v in out.values(name, "unresponsive").items() if v}
        assert flagged == {}, (name, flagged)
    twice = [k for k, n in Counter((p, ts) for p, _, ts in out.lines).items() if n > 1]
    assert not twice, twice[:5]
    dropped = [(p, v) for p, v, _ in out.lines if p.endswith(".duplicate_samples") and v]
    assert not dropped, dropped[:5]  # none was even sent twice
    # The respawn's catch-up tick and the thaw's are left out (reads late in their ticks).
    out.assert_cpu_true(ALL, [events["kill"], events["cont"]])
    assert "worker respawned" in out.stderr
    assert "libvirtd does not answer: counters from the kernel only until it does" in out.stderr
    assert "libvirtd answers again" in out.stderr
