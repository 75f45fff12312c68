"""While libvirtd is away, on real parts and fast (the restart itself, with real QEMUs, is
test_libvirtd_restart's): which ticks a worker that had to wait for libvirtd still
samples, how often it tries, and how a QEMU that exited meanwhile is told from one that
runs on (libvirtd cannot say)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

from nodes import tagged_node

from vpartcollect import wire
from vpartcollect.config import load
from vpartcollect.libvirt_conn import quiet_libvirt
from vpartcollect.worker.link import Link
from vpartcollect.worker.main import Worker
from vpartcollect.worker.qemu_proc import QemuProcesses
from vpartcollect.worker.session import Session


def frames(fd: int) -> list[wire.Message]:
    os.set_blocking(fd, False)
    return wire.FrameDecoder().feed(os.read(fd, 1 << 20))


def test_libvirt_back_is_found_within_an_interval_and_passed_ticks_stay_empty(
        tmp_path: Path) -> None:
    """The test driver's node file appears 2 s after the worker first tries to connect
    (1 s interval): it connects within one interval of that (tries 0.5 s doubling, at
    most one interval apart: 0, 0.5, 1.5, 2.5 s); the ticks that ended before it
    connected are done empty (nothing read then is stamped with them); a tick still
    running when it connected is sampled, as every later one."""
    node = tmp_path / "node.xml"
    tagged_node(tmp_path / "later.xml", ["virt-0", "virt-0"])
    cfg = load(None, {"connect": f"test://{node}", "interval": 1})
    quiet_libvirt()  # the refused tries are the point, as in a worker
    out_r, out_w = os.pipe()
    try:
        link = Link(-1, out_w)
        worker = Worker(0, cfg, link)
        appeared: list[float] = []

        def appear() -> None:
            os.rename(tmp_path / "later.xml", node)
            appeared.append(time.time())

        threading.Timer(2.0, appear).start()
        asked = time.time()
        session = Session.open(0, cfg, link, worker.guard, {})
        connected = time.time()
        assert connected - appeared[0] <= 1.0 + 0.3, (asked, appeared, connected)
        old, current = wire.Tick(float(int(asked))), wire.Tick(float(int(connected)))
        for tick in (old, current):
            worker.serve(tick, session)
        got = frames(out_r)
        done = {f.tick: f.domains for f in got if isinstance(f, wire.Done)}
        sampled = {f.tick for f in got if isinstance(f, wire.Results)}
        assert done == {old.ts: 0, current.ts: 2} and sampled == {current.ts}
    finally:
        os.close(out_r)
        os.close(out_w)


def test_a_qemu_that_exited_is_told_from_one_that_runs(tmp_path: Path) -> None:
    """A real process standing in for a QEMU (its command line carries ``-uuid``), found by
    its pid file: running, it has not exited; killed, it has, and is forgotten."""
    uuid = str(uuidlib.uuid4())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "-uuid", uuid])
    try:
        (tmp_path / "vm.pid").write_text(str(child.pid))
        qemu = QemuProcesses(pid_dir=tmp_path)
        # Once its command line is the one exec gave it (a parallel suite's rehearsal read
        # it too early once: None for the child's pid).
        deadline = time.monotonic() + 5
        while qemu.pid(uuid, "vm") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert qemu.pid(uuid, "vm") == child.pid
        assert not qemu.exited(uuid)
        assert not qemu.exited(uuid)
    finally:
        child.kill()
        child.wait()
    assert qemu.exited(uuid)
    assert qemu.pid(uuid, "vm") is None  # its pid file names a pid that is no QEMU now


def test_a_worker_respawned_while_libvirtd_refuses_starts_as_its_predecessor(
        tmp_path: Path) -> None:
    """libvirtd restarting (its socket gone) when a worker is respawned: the worker does
    not wait for it. It says its predecessor's hello at once, and samples the domains of
    the supervisor's roster from the kernel while it connects in the background; one
    whose QEMU is not found (it stopped meanwhile) is not sampled at all."""
    cfg = load(None, {"connect": f"qemu:///system?socket={tmp_path}/gone-sock", "interval": 1})
    quiet_libvirt()
    before = wire.Hello(0, 1, 7, "QEMU", ["state", "cpu-total"], ["block"])
    gone = str(uuidlib.uuid4())  # no process carries it: its QEMU exited
    out_r, out_w = os.pipe()
    try:
        link = Link(-1, out_w)
        worker = Worker(0, cfg, link, {gone: ("vm-gone", None, None, [("vnet0", True)])},
                        before)
        started = time.monotonic()
        session = Session.resume(0, cfg, link, worker.guard, worker.seed, worker.kernel,
                                 before)
        assert time.monotonic() - started < cfg.call_timeout + 0.5
        assert session.down() and session.conn is None
        worker.serve(wire.Tick(1.0), session)
        got = frames(out_r)
        hello = [f for f in got if isinstance(f, wire.Hello)]
        assert [(h.ncpus, h.driver, h.bulk_groups, h.fallback_groups) for h in hello] == [
            (7, "QEMU", ["state", "cpu-total"], ["block"])]
        assert not [f for f in got if isinstance(f, wire.Results)]
        assert [(f.tick, f.domains) for f in got if isinstance(f, wire.Done)] == [(1.0, 0)]
    finally:
        os.close(out_r)
        os.close(out_w)
