"""A datastore outage freezes a partition's QEMUs one after another, not all at once.

Each QEMU blocks when it next touches the storage, so the freezes of one partition
spread over a second or more, some of them landing inside our calls. The collector
must still leave a bounded number of calls blocked in libvirtd (``MAX_BLOCKED``), not
one more for every VM that freezes while it asks the others one by one.

Real libvirtd, real QEMU frozen with SIGSTOP (the session lab, one instance: lab-0..5
are one partition); lab-5 stays healthy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from harness import PrivateLibvirtd
from soak import Action, soak

pytestmark = [pytest.mark.libvirtd, pytest.mark.timeout(300)]

# The call a freeze catches in flight, and at most one more (README: blocked calls).
MAX_BLOCKED = 2

FROZEN = ["lab-2", "lab-3", "lab-4", "lab-0", "lab-1"]  # in the order they freeze
HEALTHY = ["lab-5"]
ROUNDS = 4
ROUND_SECONDS = 6.0
STAGGER = 0.15  # between two QEMUs freezing: an outage reaching them in turn
HOLD = 2.5  # seconds the last one stays frozen before all thaw


def outage(libvirtd: PrivateLibvirtd, events: dict[str, float]) -> Callable[[], None]:
    """Rounds of: freeze FROZEN one every STAGGER s, hold, thaw all. The first freezes
    10-16 ms after a tick: with one call per domain, the worker asks lab-k 3-30 ms after
    a tick (lab-2 at 11-15 ms, measured here), so the outage catches a call in flight.
    On a thread of its own: the soak's loop keeps reading libvirtd's busy threads."""
    def rounds() -> None:
        for k in range(ROUNDS):
            start = time.time()
            phase = 0.010 + 0.002 * k
            time.sleep((phase - time.time() % 1.0) % 1.0)
            for name in FROZEN:
                events[f"freeze {name} at {time.time()}"] = time.time()
                libvirtd.freeze(name)
                time.sleep(STAGGER)
            time.sleep(HOLD)
            for name in FROZEN:
                events[f"thaw {name} at {time.time()}"] = time.time()
                libvirtd.thaw(name)
            time.sleep(max(0.0, ROUND_SECONDS - (time.time() - start)))

    def act() -> None:
        threading.Thread(target=rounds, daemon=True).start()
    return act


def test_staggered_freeze_leaves_a_bounded_number_of_calls_blocked(
        libvirtd: PrivateLibvirtd) -> None:
    ev: dict[str, float] = {}
    actions: list[Action] = [(3.0, outage(libvirtd, ev))]
    # One call per domain, as every worker asks while a call of its is blocked.
    out = soak(libvirtd, ["--instances", "1", "--chunk-size", "1"], actions,
               seconds=4.0 + ROUNDS * ROUND_SECONDS)
    blocked = out.blocked_calls()
    threads = out.held_threads(3.0, 3.0 + ROUNDS * ROUND_SECONDS)
    healthy_cpu = [t for t in out.window() if t not in out.stamps("lab-5", "virt_cpu_total")]
    healthy_mem = [t for t in out.window() if t not in out.stamps("lab-5", "memory-total")]
    disk = out.stamps("lab-5", "disk_capacity-vda")
    print(f"staggered freeze: blocked_calls={blocked} held_threads={threads} "
          f"lab-5 disk_capacity {len([t for t in out.window() if t in disk])}/"
          f"{len(out.window())} ticks")
    assert max(blocked.values()) <= MAX_BLOCKED, (blocked, out.stderr[-3000:])
    assert threads <= MAX_BLOCKED
    # Guarantee 1: the healthy partition-mate misses no sample.
    assert not healthy_cpu and not healthy_mem, (healthy_cpu, healthy_mem)
    # Guarantee 2: each frozen one keeps its cpu and is flagged while frozen.
    for name in FROZEN:
        assert out.values(name, "unresponsive") and 1 in out.values(name, "unresponsive").values()
        missing = [t for t in out.window() if t not in out.stamps(name, "virt_cpu_total")]
        assert not missing, (name, missing)
