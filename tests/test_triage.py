"""How each domain is asked: the pure rule, and what Triage feeds it (QEMU's own view)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vpartcollect.calls import CallKind
from vpartcollect.config import load
from vpartcollect.worker.datastores import Image
from vpartcollect.worker.guard import Abandoned, Guard
from vpartcollect.worker.inventory import Domain
from vpartcollect.worker.qemu_proc import QemuProcesses, thread_state
from vpartcollect.worker.triage import MAX_BLOCKED, Route, Triage, route

HEALTHY: dict[str, Any] = {"frozen": False, "stalled": False, "seen": True, "in_hung_call": False,
                          "alone_in_hung_call": False, "culprits": 0}


@pytest.mark.parametrize(("change", "expected"), [
    ({}, Route.NORMAL),
    ({"frozen": True}, Route.FROZEN),
    # A frozen QEMU's hung call holds its monitor job, not its object lock: the
    # QEMU-free calls still answer, so it keeps reporting cpu and state.
    ({"frozen": True, "in_hung_call": True, "alone_in_hung_call": True, "culprits": 1},
     Route.FROZEN),
    ({"stalled": True}, Route.NO_BLOCK),
    ({"alone_in_hung_call": True, "in_hung_call": True, "culprits": 1}, Route.HOLD),
    ({"stalled": True, "alone_in_hung_call": True, "in_hung_call": True, "culprits": 1},
     Route.HOLD),
    # In a chunk that hung, /proc vouches for it: asked alone (NOWAIT).
    ({"in_hung_call": True, "culprits": 2}, Route.NORMAL),
    # No /proc view: a partition-mate of one culprit is asked (alone); once two are known,
    # the others of the chunk are held: a datastore outage costs two threads, not one each.
    ({"in_hung_call": True, "seen": False, "culprits": 0}, Route.NORMAL),
    ({"in_hung_call": True, "seen": False, "culprits": 1}, Route.NORMAL),
    ({"in_hung_call": True, "seen": False, "culprits": 2}, Route.HOLD),
    ({"seen": False, "culprits": 2}, Route.NORMAL),
    # One call blocked (a freeze caught one in flight): the healthy are still asked all.
    ({"blocked": MAX_BLOCKED - 1}, Route.NORMAL),
    ({"blocked": MAX_BLOCKED - 1, "in_hung_call": True}, Route.NORMAL),
    # The cap: a QEMU /proc vouched for may freeze before its call (an outage reaching a
    # partition's QEMUs one after another): nothing needing the monitor is asked.
    ({"blocked": MAX_BLOCKED}, Route.SPARE),
    ({"blocked": MAX_BLOCKED + 3, "in_hung_call": True}, Route.SPARE),
    ({"blocked": MAX_BLOCKED, "stalled": True}, Route.FROZEN),
    ({"blocked": MAX_BLOCKED, "frozen": True}, Route.FROZEN),
    ({"blocked": MAX_BLOCKED, "alone_in_hung_call": True, "in_hung_call": True,
      "culprits": 1}, Route.HOLD),
])
def test_route(change: dict[str, object], expected: Route) -> None:
    assert route(**{**HEALTHY, **change}) is expected


def fake_proc(tmp_path: Path, pid: int, uuid: str) -> Path:
    """A /proc where QEMU ``pid`` runs in a mount namespace of its own, with a FUSE
    datastore at /srv that the collector's namespace does not have."""
    proc = tmp_path / "proc"
    for who, ns, info in (
            ("self", "mnt:[1]", "22 1 253:1 / / rw - ext4 /dev/vda1 rw\n"),
            (str(pid), "mnt:[2]", "22 1 253:1 / / rw - ext4 /dev/vda1 rw\n"
                                  "40 22 0:53 / /srv rw - fuse stallfs rw\n")):
        (proc / who / "ns").mkdir(parents=True)
        os.symlink(ns, proc / who / "ns" / "mnt")
        (proc / who / "mountinfo").write_text(info)
    (proc / str(pid) / "cmdline").write_bytes(f"qemu\0-uuid\0{uuid}\0".encode())
    image = proc / str(pid) / "root" / "srv" / "a.qcow2"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"q" * 3000)
    return proc


def test_a_datastore_is_probed_where_qemu_sees_it(tmp_path: Path) -> None:
    """The collector in a namespace of its own (a container, a unit with private mounts):
    /srv/a.qcow2 does not exist for it, but QEMU's /srv is a FUSE mount. The probe looks
    through /proc/<pid>/root, names the store by QEMU's mountinfo, and reads the size
    QEMU would report."""
    proc = fake_proc(tmp_path, 4242, "u-1")
    cfg = load(None, {"connect": "test:///default"})
    triage = Triage(cfg, proc, qemu=QemuProcesses(proc, tmp_path / "no-pid-files"))
    dom = Domain(None, "u-1", "vm", None, 0.0, disks=[("vda", "/srv/a.qcow2")])
    assert triage.stores(dom) == {
        "dev:0:53": [Image("/srv/a.qcow2", f"{proc}/4242/root/srv/a.qcow2")]}
    triage.start([dom])
    triage.probes.settle()
    assert triage.sizes["/srv/a.qcow2"][0] == 3000
    # Without its QEMU's pid, the collector's own view is what is left.
    other = Domain(None, "u-2", "other", None, 0.0, disks=[("vda", "/var/b.img")])
    assert triage.stores(other) == {"dev:253:1": [Image("/var/b.img", "/var/b.img")]}


def test_routes_follow_the_probes_and_the_guard(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4242, "u-1")
    triage = Triage(load(None, {"connect": "test:///default"}), proc,
                    qemu=QemuProcesses(proc, tmp_path / "no-pid-files"))
    dom = Domain(None, "u-1", "vm", None, 0.0, disks=[("vda", "/srv/a.qcow2")])
    triage.start([dom])
    assert triage.routes([dom], Guard())[Route.NORMAL] == [dom]


def test_no_monitor_call_past_the_cap() -> None:
    """Whatever else is known, at MAX_BLOCKED calls blocked no route needs a monitor."""
    needs_monitor = {Route.NORMAL, Route.NO_BLOCK}
    flags = ("frozen", "stalled", "seen", "in_hung_call", "alone_in_hung_call")
    for bits in range(1 << len(flags)):
        facts: dict[str, Any] = {f: bool(bits >> i & 1) for i, f in enumerate(flags)}
        for culprits in range(4):
            for blocked in range(MAX_BLOCKED, MAX_BLOCKED + 3):
                assert route(**facts, culprits=culprits, blocked=blocked) not in needs_monitor


@pytest.fixture
def three_qemus(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """Three forked children idling in their main loop, ``-uuid u-N`` on their command
    lines as QEMU has, and a pid-file directory naming them vm-1..vm-3."""
    pids = tmp_path / "run"
    pids.mkdir()
    procs = []
    try:
        for n in (1, 2, 3):
            proc = subprocess.Popen([sys.executable, "-c", "import time; print('ready', "
                                     "flush=True); time.sleep(120)", "-uuid", f"u-{n}"],
                                    stdout=subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            (pids / f"vm-{n}.pid").write_text(f"{proc.pid}\n")
        yield pids, procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_the_cap_counts_only_calls_caught_by_frozen_qemus(
        three_qemus: tuple[Path, list[subprocess.Popen[bytes]]]) -> None:
    """Calls blocked on libvirtd's own locks (a listing, a wedged domain whose QEMU runs:
    the chunk that found it and its own call) cost the partition-mates nothing: they are
    asked in full. Calls on a QEMU /proc then finds frozen are what an outage freezing
    QEMUs in turn leaves: at MAX_BLOCKED of those, no monitor call more. Real children
    stopped with SIGSTOP; the calls are real ones left blocked on an event."""
    pids, procs = three_qemus
    doms = [Domain(None, f"u-{n}", f"vm-{n}", None, 0.0, disks=[]) for n in (1, 2, 3)]
    triage = Triage(load(None, {"connect": "test:///default"}), Path("/proc"),
                    qemu=QemuProcesses(Path("/proc"), pids, longest=0.2))
    guard, release = Guard(), threading.Event()
    try:
        for kind, uuids in ((CallKind.LIST, []), (CallKind.STATS, ["u-2", "u-3"]),
                            (CallKind.STATS, ["u-2"])):
            with pytest.raises(Abandoned):
                guard.run(kind, uuids, 0.01, release.wait)
        routes = triage.routes(doms, guard)
        assert routes[Route.NORMAL] == [doms[0], doms[2]] and routes[Route.HOLD] == [doms[1]]
        os.kill(procs[1].pid, signal.SIGSTOP)  # u-2 froze: both calls on it were caught
        stat = Path(f"/proc/{procs[1].pid}/stat")
        for _ in range(200):  # the signal is delivered asynchronously
            if thread_state(stat.read_text()) == "T":
                break
            time.sleep(0.01)
        routes = triage.routes(doms, guard)
        assert routes[Route.FROZEN] == [doms[1]]
        assert routes[Route.SPARE] == [doms[0], doms[2]]
    finally:
        release.set()
        os.kill(procs[1].pid, signal.SIGCONT)


def test_sparing_healthy_domains_is_said_once_an_episode(
        caplog: pytest.LogCaptureFixture) -> None:
    """Review: past the cap every healthy partition-mate lost its block stats for as long
    as the frozen QEMUs stayed frozen (a hard-mounted export: for good), and nothing said
    so. One warning when it starts, one line when it ends; none while every domain of the
    partition is frozen or held and the calls are still blocked."""
    triage = Triage(load(None, {}))
    doms = [Domain(None, f"u-{i}", f"vm-{i}", "virt-0", 0.0) for i in range(3)]
    with caplog.at_level("INFO", logger="vpartcollect.worker.triage"):
        for spared, blocked in [([], 1), (doms, 2), (doms, 2), ([], 2), (doms[:1], 2),
                                ([], 1), ([], 0)]:
            triage.note_spared(spared, blocked)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith("3 domain(s) asked only what needs no monitor"), said
    assert "2 call(s) of ours blocked on frozen QEMUs, at most 2" in said[0]
    assert said[1].startswith("domains asked for everything again"), said
