"""Is a domain's QEMU frozen? The /proc judgement, on a forked child's real /proc (and,
for the one case the kernel cannot be made to show on demand, a fake /proc named so)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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


@pytest.fixture
def child_qemu() -> Iterator[subprocess.Popen[bytes]]:
    """A forked child idling in its main loop, with ``-uuid U-1`` on its command line as
    QEMU has: a real /proc/<pid> whose state the kernel keeps."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); "
                             "time.sleep(120)", "-uuid", "U-1"], stdout=subprocess.PIPE)
    # Popen returns at exec's point of no return, before the new command line is in place.
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def state_of(pid: int) -> str:
    return thread_state(Path(f"/proc/{pid}/task/{pid}/stat").read_text())


def wait_for_state(pid: int, states: str) -> None:
    for _ in range(200):
        if state_of(pid) in states:
            return
        time.sleep(0.01)
    raise AssertionError(f"{pid} stayed {state_of(pid)}, not {states}")


def test_a_real_process_is_found_and_judged_frozen_when_stopped(
        tmp_path: Path, child_qemu: subprocess.Popen[bytes]) -> None:
    """A forked child, found by the pid file or the command line, judged by its main
    thread's state as the kernel gives it: asleep in its main loop is fine; SIGSTOPped
    (a storage stall does this to QEMU) is frozen; SIGCONT: fine again; gone: forgotten."""
    pid = child_qemu.pid
    pids = tmp_path / "run"
    pids.mkdir()
    (pids / "vm.pid").write_text(f"{pid}\n")
    qemu = QemuProcesses(Path("/proc"), pids, longest=0.2)
    assert qemu.pid("U-1", "vm") == pid
    wait_for_state(pid, "S")
    assert qemu.frozen([("u-1", "vm")]) == set()
    os.kill(pid, signal.SIGSTOP)
    wait_for_state(pid, "T")
    assert qemu.frozen([("U-1", "vm")]) == {"U-1"}
    assert qemu.why == {"u-1": "stopped"}  # the health metrics' frozen_qemus-stopped
    os.kill(pid, signal.SIGCONT)
    wait_for_state(pid, "S")
    assert qemu.frozen([("u-1", "vm")]) == set()
    assert qemu.why == {}
    fresh = QemuProcesses(Path("/proc"), tmp_path / "none")  # no pid file: the command line
    assert fresh.pid("u-1", "other-name") == pid
    assert fresh.pid("u-2", "vm") is None
    child_qemu.kill()
    child_qemu.wait()
    assert fresh.frozen([("u-1", "vm")]) == set()  # gone: not frozen, and forgotten
    assert qemu.pid("u-1", "vm") == pid  # cached until a check finds it gone
    assert qemu.frozen([("u-1", "vm")]) == set()
    assert qemu.pid("u-1", "vm") is None  # its pid file names a process that is not it


def test_a_thread_in_d_that_is_still_scheduled_is_busy_not_frozen(tmp_path: Path) -> None:
    """A FAKE /proc (files this test writes): a main thread in D on every look whose
    context switches keep moving (I/O that completes) cannot be produced on demand here,
    so its judgement is shown on written files: busy while the count moves, frozen once
    it stops."""
    pid = 4242
    proc = tmp_path / "proc"
    task = proc / str(pid) / "task" / str(pid)
    task.mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"qemu\0-uuid\0u-1\0")
    (task / "stat").write_text(f"{pid} (qemu-system-x86) D 1 2 3")
    (task / "wchan").write_text("folio_wait_bit")
    (task / "status").write_text("voluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t2\n")
    qemu = QemuProcesses(proc, tmp_path / "none", longest=0.2)
    assert qemu.pid("u-1", "vm") == pid
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
