"""Is a domain's QEMU frozen? The /proc judgement, on a /proc laid out like the real one."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from vpartcollect.worker.qemu_proc import (
    FS_WAIT_SECONDS,
    IO_WAIT_SECONDS,
    STOPPED_SECONDS,
    QemuProcesses,
    cmdline_uuid,
    looks_frozen,
    stuck_for,
    thread_state,
)


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
