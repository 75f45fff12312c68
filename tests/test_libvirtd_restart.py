"""libvirtd killed and started again (a crash; every libvirt upgrade's restart) beside the
session's QEMU lab (lab-0..5, tagged virt-0,1,2,0,1,2), at a 1 s interval.

QEMUs run on meanwhile, so the kernel reader goes on: no worker exits (a client writing
on libvirtd's dead socket gets SIGPIPE); cpu, vCPU and interface values of every domain
at every tick, their cpu rates /proc's; what only libvirtd gives (balloon, block, state)
is missing while it is gone, never written from a later read, and back within two
intervals of libvirtd answering again.
"""

from __future__ import annotations

import time

import pytest
from harness import PrivateLibvirtd
from soak import Outcome, soak

pytestmark = pytest.mark.libvirtd

ALL = [f"lab-{i}" for i in range(6)]
KILL_AT, DOWN_FOR, AFTER = 8.0, 10.0, 7.0
KERNEL = ("virt_cpu_total", "virt_vcpu-0", "if_octets-lt{}.rx", "if_packets-lt{}.tx")
# What the kernel gives (and the flag every sample carries); all else needs libvirtd.
FROM_KERNEL = ("virt_cpu_total", "virt_vcpu-", "if_", "unresponsive")
ONLY_LIBVIRTD = ("memory-total", "disk_capacity-vda", "domain_state.state",
                 "disk_octets-vda.read")


def test_libvirtd_killed_for_10s_and_started_again(libvirtd: PrivateLibvirtd) -> None:
    events: dict[str, float] = {}

    def kill() -> None:
        events["kill"] = time.time()
        libvirtd.kill_daemon()

    def start() -> None:
        events["start"] = time.time()
        libvirtd.start()  # returns once libvirtd answers
        events["up"] = time.time()

    out = soak(libvirtd, ["--instances", "3", "--extra-stats",
                          "vcpu disk_capacity domain_state"],
               [(KILL_AT, kill), (KILL_AT + DOWN_FOR, start)],
               seconds=KILL_AT + DOWN_FOR + AFTER)
    killed, started, up = events["kill"], events["start"], events["up"]
    # Ticks whose reads all fell while no libvirtd ran (a tick's reads land within it).
    gone = [t for t in out.window() if killed < t and t + 1 <= started]
    assert len(gone) >= DOWN_FOR - 2, (gone, events)
    print(restart_figures(out, gone, up))  # the before/now table (pytest -s)
    respawns = max(v for p, v, _ in out.lines if p.endswith(".respawns"))
    exits = out.stderr.count("worker exited")
    assert exits == 0 and respawns == 0, (
        f"{exits} worker exit(s), {respawns} respawn(s):\n{out.stderr[-3000:]}")
    for name in ALL:
        for metric in (m.format(name[-1]) for m in KERNEL):
            missing = [t for t in out.window() if t not in out.stamps(name, metric)]
            assert not missing, (f"{name} {metric} missing at {missing} (killed {killed:.1f}, "
                                 f"up {up:.1f}):\n{out.stderr[-3000:]}")
        # Nothing written that was not read at its tick: with libvirtd gone, only the
        # kernel's values.
        made_up = sorted({p for p, _, ts in out.lines if int(ts) in gone
                          and p.startswith(f"{name}.virt.")
                          and not p.split(".virt.", 1)[1].startswith(FROM_KERNEL)})
        assert not made_up, f"{name}: written with libvirtd gone: {made_up}"
        for metric in ONLY_LIBVIRTD:
            back = sorted(t for t in out.stamps(name, metric) if t > up)
            # Within two intervals of libvirtd answering, and at every tick from then on.
            assert back and back[0] <= up + 2, (name, metric, up, back[:3],
                                                out.stderr[-2000:])
            assert set(range(back[0], max(out.window()) + 1)) <= set(back), (name, metric)
        flagged = {t: v for t, v in out.values(name, "unresponsive").items() if v}
        assert flagged == {}, (name, flagged)
    out.assert_cpu_true(ALL)
    assert "counters from the kernel only" in out.stderr
    assert "libvirtd answers again" in out.stderr


def restart_figures(out: Outcome, gone: list[int], up: float) -> str:
    """What an operator would count: ticks with libvirtd gone that have every domain's cpu,
    values written then that only libvirtd gives, worker exits, and how long after libvirtd
    answered the last domain's first block value came."""
    with_cpu = [t for t in gone if all(t in out.stamps(n, "virt_cpu_total") for n in ALL)]
    made_up = sum(t in out.stamps(n, "memory-total") for n in ALL for t in gone)
    first = [min((t for t in out.stamps(n, "disk_capacity-vda") if t > up), default=None)
             for n in ALL]
    delay = max((t - up for t in first if t is not None), default=float("nan"))
    return (f"ticks with libvirtd gone: {len(gone)}, with cpu of every domain: "
            f"{len(with_cpu)}; memory-total written then: {made_up}; worker exits: "
            f"{out.stderr.count('worker exited')}; first block value {delay:.1f} s after "
            f"libvirtd answered ({sum(t is None for t in first)} domain(s) never)")
