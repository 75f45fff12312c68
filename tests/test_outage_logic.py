"""The pure parts of outage handling: routing, /proc judgement, datastores, the call guard."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from vpartcollect.autotag import Mount
from vpartcollect.datastores import Probes, datastores
from vpartcollect.guard import Abandoned, Guard
from vpartcollect.libvirt_stats import as_block_info
from vpartcollect.qemu_proc import (
    FS_WAIT_SECONDS,
    IO_WAIT_SECONDS,
    STOPPED_SECONDS,
    QemuProcesses,
    cmdline_uuid,
    looks_frozen,
    stuck_for,
    thread_state,
)
from vpartcollect.triage import Route, route

HEALTHY = {"frozen": False, "stalled": False, "seen": True, "in_hung_call": False,
           "alone_in_hung_call": False, "blocked": 0}


@pytest.mark.parametrize(("change", "expected"), [
    ({}, Route.NORMAL),
    ({"frozen": True}, Route.FROZEN),
    # A frozen QEMU's hung call holds its monitor job, not its object lock: the
    # QEMU-free calls still answer, so it keeps reporting cpu and state.
    ({"frozen": True, "in_hung_call": True, "alone_in_hung_call": True, "blocked": 1},
     Route.FROZEN),
    ({"stalled": True}, Route.NO_BLOCK),
    ({"alone_in_hung_call": True, "in_hung_call": True, "blocked": 1}, Route.HOLD),
    ({"stalled": True, "alone_in_hung_call": True, "in_hung_call": True, "blocked": 1},
     Route.HOLD),
    # In a chunk that hung, /proc vouches for it: asked alone (NOWAIT).
    ({"in_hung_call": True, "blocked": 1}, Route.NORMAL),
    # No /proc view: asked alone only while the hung chunk is our one blocked call.
    ({"in_hung_call": True, "seen": False, "blocked": 1}, Route.NORMAL),
    ({"in_hung_call": True, "seen": False, "blocked": 2}, Route.HOLD),
    ({"seen": False, "blocked": 2}, Route.NORMAL),
])
def test_route(change: dict[str, object], expected: Route) -> None:
    assert route(**{**HEALTHY, **change}) is expected  # type: ignore[arg-type]


def test_thread_state_survives_a_name_with_parentheses() -> None:
    assert thread_state("4242 (qemu) (evil) x) T 1 4242 4242 0 -1") == "T"


@pytest.mark.parametrize(("state", "wchan", "frozen"), [
    ("T", "do_signal_stop", True),  # SIGSTOP
    ("t", "ptrace_stop", True),
    ("D", "rpc_wait_bit_killable", True),  # hard NFS mount
    ("S", "request_wait_answer", True),  # FUSE: stat() of an image on a dead store
    ("S", "fuse_do_getattr", True),
    ("S", "poll_schedule_timeout.constprop.0", False),  # idle main loop
    ("R", "0", False),
    ("S", "", False),  # wchan unreadable (not root)
])
def test_looks_frozen(state: str, wchan: str, frozen: bool) -> None:
    assert looks_frozen(state, wchan) is frozen


def test_how_long_each_kind_of_stuck_must_last() -> None:
    # Stopped: at once; a dead network/FUSE filesystem: 250 ms; other D (a busy disk
    # holds a healthy QEMU there up to ~0.5 s, measured): 1 s.
    assert stuck_for("T", "do_signal_stop") == STOPPED_SECONDS < FS_WAIT_SECONDS
    assert stuck_for("D", "rpc_wait_bit_killable") == FS_WAIT_SECONDS
    assert stuck_for("S", "request_wait_answer") == FS_WAIT_SECONDS
    assert stuck_for("D", "folio_wait_bit") == IO_WAIT_SECONDS > FS_WAIT_SECONDS
    assert stuck_for("S", "poll_schedule_timeout") is None


def test_cmdline_uuid() -> None:
    line = b"/usr/bin/qemu\0-name\0guest=a,debug-threads=on\0-uuid\0ABCD-1\0-S\0"
    assert cmdline_uuid(line) == "abcd-1"
    assert cmdline_uuid(b"/bin/sh\0-c\0-uuid") is None


def test_qemu_of_this_very_process_is_found_and_judged(tmp_path: Path) -> None:
    """A /proc laid out like the real one (this test's own pid): found by the pid file or
    the command line, judged by the main thread's state, forgotten when it goes away."""
    pid = os.getpid()
    proc = tmp_path / "proc"
    task = proc / str(pid) / "task" / str(pid)
    task.mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"qemu\0-uuid\0u-1\0")
    (task / "stat").write_text(f"{pid} (qemu-system-x86) S 1 2 3")
    (task / "wchan").write_text("poll_schedule_timeout")
    (task / "status").write_text("voluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t2\n")
    pids = tmp_path / "run"
    pids.mkdir()
    (pids / "vm.pid").write_text(f"{pid}\n")
    qemu = QemuProcesses(proc, pids, longest=0.2)
    assert qemu.pid("U-1", "vm") == pid
    assert qemu.frozen([("u-1", "vm")]) == set()
    (task / "stat").write_text(f"{pid} (qemu-system-x86) T 1 2 3")
    assert qemu.frozen([("u-1", "vm")]) == {"u-1"}
    # In D on both reads but scheduled between them (I/O that completes): busy, not frozen.
    (task / "stat").write_text(f"{pid} (qemu-system-x86) D 1 2 3")
    (task / "wchan").write_text("folio_wait_bit")
    stop = threading.Event()

    def switching() -> None:
        n = 10
        while not stop.wait(0.005):
            n += 1
            (task / "status").write_text(f"voluntary_ctxt_switches:\t{n}\n")

    worker = threading.Thread(target=switching)
    worker.start()
    try:
        assert qemu.frozen([("u-1", "vm")]) == set()
    finally:
        stop.set()
        worker.join()
    assert qemu.frozen([("u-1", "vm")]) == {"u-1"}  # not scheduled any more: frozen
    (pids / "vm.pid").unlink()
    fresh = QemuProcesses(proc, pids)  # no pid file: the command line finds it
    assert fresh.pid("u-1", "other-name") == pid
    assert fresh.pid("u-2", "vm") is None
    (task / "stat").unlink()  # the process went away
    assert fresh.frozen([("u-1", "vm")]) == set()


def test_datastores_are_mounts_of_file_images() -> None:
    mounts = [Mount("/dev/sda1", "/", "ext4"), Mount("nas:/vms", "/mnt/nfs", "nfs4"),
              Mount("stallfs", "/mnt/nfs/fuse", "fuse")]
    got = datastores(["/mnt/nfs/a.qcow2", "/mnt/nfs/b.qcow2", "/mnt/nfs/fuse/c.img",
                      "/var/lib/d.img", "/dev/sdb", "pool/vol", ""], mounts)
    assert got == {"/mnt/nfs": ["/mnt/nfs/a.qcow2", "/mnt/nfs/b.qcow2"],
                   "/mnt/nfs/fuse": ["/mnt/nfs/fuse/c.img"], "/": ["/var/lib/d.img"]}


def test_probes_answer_and_never_double_up(tmp_path: Path) -> None:
    probes = Probes(timeout=0.5)
    probes.start({"/": [str(tmp_path)], "/gone": [str(tmp_path / "missing")]})
    probes.settle()
    assert probes.dead() == set()  # "no such file" is an answer too
    # A store that does not answer, shown with a FIFO: opening one waits for a writer.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    looks: list[str] = []

    def look(path: str) -> None:
        looks.append(path)
        if path == str(fifo):
            Path(path).read_bytes()

    probes = Probes(timeout=0.2, look=look)
    probes.start({"/dead": [str(fifo)], "/fine": [str(tmp_path)]})
    probes.settle()
    assert probes.dead() == {"/dead"}
    probes.start({"/dead": [str(fifo)], "/fine": [str(tmp_path)]})
    probes.settle()
    assert looks.count(str(fifo)) == 1  # still out: never a second probe of that store
    assert looks.count(str(tmp_path)) == 2
    with open(fifo, "w"):
        pass  # the store answers
    time.sleep(0.1)
    assert probes.dead() == set()
    probes.start({"/dead": [str(fifo)]})
    assert looks.count(str(fifo)) == 2
    with open(fifo, "w"):
        pass  # let that probe go too


def test_a_store_that_dies_after_its_probe_is_seen_by_a_recheck(tmp_path: Path) -> None:
    """A call hung: the worker asks the stores of its domains again, keeping the rest."""
    dead = threading.Event()
    release = threading.Event()
    image, other = tmp_path / "a.img", tmp_path / "b.img"
    image.write_bytes(b"x" * 100)
    other.write_bytes(b"y" * 10)

    def look(path: str) -> os.stat_result:
        if dead.is_set() and path == str(image):
            release.wait(5)  # the store stopped answering
        return os.stat(path)

    probes = Probes(timeout=0.2, look=look)
    probes.start({"/nfs": [str(image)], "/local": [str(other)]})
    probes.settle()
    assert probes.dead() == set() and set(probes.sizes) == {str(image), str(other)}
    dead.set()  # it dies after this cycle's probe answered
    probes.recheck({"/nfs": [str(image)]})
    probes.settle()
    assert probes.dead() == {"/nfs"}
    assert probes.sizes[str(other)][0] == 10  # the other store's sizes are kept
    release.set()


def test_guard_counts_abandoned_calls_until_they_return() -> None:
    guard = Guard()
    assert guard.run("stats", ["a"], 1.0, lambda: 42) == 42
    release = threading.Event()
    with pytest.raises(Abandoned) as abandoned:
        guard.run("stats", ["a", "b"], 0.05, release.wait)
    late: list[object] = []
    abandoned.value.call.late = late.append
    with pytest.raises(Abandoned):
        guard.run("list", [], 0.05, release.wait)
    with pytest.raises(Abandoned):
        guard.run("describe", ["c"], 0.05, release.wait)
    assert len(guard.outstanding()) == 3 and guard.busy_with("list")
    assert guard.involving(("stats", "frozen")) == ({"a", "b"}, set())
    assert guard.involving(("describe",)) == ({"c"}, {"c"})
    release.set()
    time.sleep(0.05)
    back = guard.returned()
    assert sorted(c.what for c, _ in back) == ["describe", "list", "stats"]
    assert all(took >= 0.05 for _, took in back)
    stats = next(c for c, _ in back if c.what == "stats")
    assert stats.late is not None and not stats.failed
    stats.late(stats.value())  # what the worker does: the answer, late, not lost
    assert late == [True]
    assert guard.outstanding() == [] and not guard.busy_with("list")


def test_guard_knows_which_connection_a_stuck_call_holds() -> None:
    guard = Guard()
    old, new = object(), object()
    release = threading.Event()
    with pytest.raises(Abandoned):
        guard.run("stats", ["a"], 0.05, release.wait, conn=old)
    assert guard.run("stats", ["b"], 1.0, lambda: 1, conn=new) == 1
    assert guard.in_use(old) and not guard.in_use(new)
    release.set()
    time.sleep(0.05)
    assert not guard.in_use(old)  # the worker may close it now


def test_guard_passes_exceptions_through() -> None:
    def boom() -> None:
        raise ValueError("libvirt said no")

    with pytest.raises(ValueError, match="libvirt said no"):
        Guard().run("stats", [], 1.0, boom)


def test_probes_read_the_size_of_every_image_of_a_store(tmp_path: Path) -> None:
    sparse, full = tmp_path / "sparse.img", tmp_path / "full.img"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 20)
    full.write_bytes(b"x" * 8192)
    probes = Probes(timeout=1.0)
    probes.start({"/": [str(sparse), str(full), str(tmp_path / "missing")]})
    probes.settle()
    assert probes.sizes[str(sparse)] == (1 << 20, os.stat(sparse).st_blocks * 512)
    assert probes.sizes[str(full)][0] == 8192 and probes.sizes[str(full)][1] >= 8192
    assert str(tmp_path / "missing") not in probes.sizes
    probes.start({"/": [str(full)]})  # an image no disk uses any more is forgotten
    probes.settle()
    assert list(probes.sizes) == [str(full)]


def test_block_info_meaning_for_file_images_only() -> None:
    # Values measured on libvirt 9.0 for a fresh qcow2 file and a block device.
    stats: dict[str, int | float | str] = {
        "block.count": 3,
        "block.0.name": "vda", "block.0.path": "/var/lib/images/a.qcow2",
        "block.0.capacity": 67108864, "block.0.allocation": 0, "block.0.physical": 200704,
        "block.1.name": "vdb", "block.1.path": "/dev/loop0",
        "block.1.capacity": 33554432, "block.1.allocation": 0, "block.1.physical": 33554432,
        "block.2.name": "vdc", "block.2.path": "/var/lib/images/unprobed.img",
        "block.2.capacity": 1, "block.2.allocation": 1, "block.2.physical": 1}
    as_block_info(stats, {"/var/lib/images/a.qcow2": (196616, 200704)})
    # collectd (virDomainGetBlockInfo): allocation = space taken, physical = file size
    assert (stats["block.0.allocation"], stats["block.0.physical"]) == (200704, 196616)
    assert stats["block.0.capacity"] == 67108864
    # a device node: both APIs agree already
    assert (stats["block.1.allocation"], stats["block.1.physical"]) == (0, 33554432)
    # a file whose size is not known: left out, never sent with the other meaning
    assert "block.2.allocation" not in stats and "block.2.physical" not in stats
    assert stats["block.2.capacity"] == 1
