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
from vpartcollect.worker.link import Link
from vpartcollect.worker.main import Worker
from vpartcollect.worker.qemu_proc import QemuProcesses
from vpartcollect.worker.session import RECONNECT_MAX, RECONNECT_MIN, Session, reconnect_cap


def frames(fd: int) -> list[wire.Message]:
    os.set_blocking(fd, False)
    return wire.FrameDecoder().feed(os.read(fd, 1 << 20))


def test_reconnect_waits_at_most_one_interval() -> None:
    """libvirtd back from a restart is tried within one interval (block values back within
    two), yet never more often than RECONNECT_MIN, nor less than RECONNECT_MAX."""
    assert reconnect_cap(1.0) == 1.0
    assert reconnect_cap(0.1) == RECONNECT_MIN
    assert reconnect_cap(600.0) == RECONNECT_MAX


def test_ticks_that_passed_while_libvirtd_was_away_are_not_sampled_late(
        tmp_path: Path) -> None:
    """The test driver's node file appears 1.5 s after the worker first tries: the ticks
    that ended before it connected are done empty (nothing read then is stamped with them);
    a tick still running when it connected is sampled, as every later one."""
    node = tmp_path / "node.xml"
    tagged_node(tmp_path / "made.xml", ["virt-0", "virt-0"])
    os.rename(tmp_path / "made.xml", tmp_path / "later.xml")
    cfg = load(None, {"connect": f"test://{node}", "interval": 1})
    out_r, out_w = os.pipe()
    try:
        link = Link(-1, out_w)
        worker = Worker(0, cfg, link)
        threading.Timer(1.5, lambda: os.rename(tmp_path / "later.xml", node)).start()
        asked = time.time()
        session = Session.open(0, cfg, link, worker.guard, {})
        assert session.back_at >= asked + 1.4
        old, current = wire.Tick(float(int(asked))), wire.Tick(float(int(session.back_at)))
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
        assert qemu.pid(uuid, "vm") == child.pid
        assert not qemu.exited(uuid)
        assert not qemu.exited(uuid)
    finally:
        child.kill()
        child.wait()
    assert qemu.exited(uuid)
    assert qemu.pid(uuid, "vm") is None  # its pid file names a pid that is no QEMU now
