"""Is a domain's QEMU frozen? Its main thread's state in /proc, read before asking libvirt.

QEMU's main thread serves the monitor. When it is stopped (``T``: SIGSTOP), in
uninterruptible sleep (``D``: a hard NFS mount) or asleep waiting on a
filesystem request (``S`` with a FUSE/NFS wchan: a stat() of a dead image),
every monitor-bound libvirt call on that domain blocks, and each blocked call
holds one libvirtd worker thread.

Looking stuck twice is not enough: under heavy disk I/O a healthy main thread is
in D on 8 % of reads, and on 6 % of pairs of reads 30 ms apart (measured by
bench/false_frozen.py). What tells a frozen thread from a busy one is progress:
a frozen thread is never scheduled, so its context switch counts do not move,
while one waiting on I/O switches each time it wakes. How long it must stay stuck
and unscheduled depends on where it sleeps (``stuck_for``): a stopped thread is
frozen for sure; one waiting on a network or FUSE filesystem for 250 ms; one in
D anywhere else (block I/O: a busy local disk, or a SAN LUN that died) for 1 s,
since with Linux AIO (``io='native'``) and a saturated disk one submission kept
it there, unscheduled, for up to 0.5-1 s (at 1 s: no false flag in 2,000
checks). A thread is looked at every RECHECK_SECONDS and let go at the first
look that sees it move, so only a frozen one costs the whole wait.

Finding the process: libvirt's pid file ``/run/libvirt/qemu/<name>.pid``, else
the process whose command line carries ``-uuid <uuid>``. Without a pid (no
root, another host's libvirtd) a domain is simply never judged frozen.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

PID_DIR = Path("/run/libvirt/qemu")
RECHECK_SECONDS = 0.02  # between two looks at the threads that seem stuck
STOPPED_SECONDS = 0.03  # T: stopped (SIGSTOP) never passes on its own
FS_WAIT_SECONDS = 0.25  # asleep on a network or FUSE filesystem request
IO_WAIT_SECONDS = 1.0  # D elsewhere: a saturated disk holds a thread there up to ~0.5 s
RESCAN_SECONDS = 10.0  # how often /proc is scanned again for domains without a pid

# Kernel functions a thread sleeps in while waiting on a filesystem that may be dead.
_FS_WAIT = re.compile(r"request_wait_answer|fuse_|nfs|rpc_|__rpc_|cifs|smb2?_|ceph_"
                      r"|wait_for_response")


def _read(path: str) -> str:
    """A small /proc file as text: one open and one read (pathlib costs several times that,
    and this runs for every domain every cycle)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)


def thread_state(stat_text: str) -> str:
    """The state letter of a /proc/<pid>/task/<tid>/stat line (the name may hold ')')."""
    return stat_text.rsplit(")", 1)[1].split()[0]


def stuck_for(state: str, wchan: str) -> float | None:
    """How long a main thread in ``state`` sleeping in ``wchan`` must stay so, never
    scheduled, to count as frozen; None when it is not stuck at all."""
    if state in ("T", "t"):
        return STOPPED_SECONDS
    if state in ("S", "D") and _FS_WAIT.match(wchan):
        return FS_WAIT_SECONDS
    if state == "D":
        return IO_WAIT_SECONDS
    return None


def frozen_why(wait: float) -> str:
    """Why a thread that stayed stuck for ``wait`` (``stuck_for``'s answer) is frozen, as
    the health metrics name it: ``stopped``, ``filesystem`` or ``d_state``."""
    return {STOPPED_SECONDS: "stopped", FS_WAIT_SECONDS: "filesystem"}.get(wait, "d_state")


def looks_frozen(state: str, wchan: str) -> bool:
    """Whether a main thread in ``state`` sleeping in ``wchan`` cannot serve its monitor now."""
    return stuck_for(state, wchan) is not None


def context_switches(status_text: str) -> int:
    """Voluntary plus involuntary context switches, from a /proc/.../status text."""
    total = 0
    for line in status_text.splitlines():
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            total += int(line.split(":", 1)[1])
    return total


def cmdline_uuid(cmdline: bytes) -> str | None:
    """The value of ``-uuid`` in a NUL-separated QEMU command line, if any."""
    args = cmdline.split(b"\0")
    for i, arg in enumerate(args[:-1]):
        if arg == b"-uuid":
            return args[i + 1].decode(errors="replace").lower()
    return None


class QemuProcesses:
    """QEMU pids of running domains, found once and checked each cycle."""

    def __init__(self, proc: Path = Path("/proc"), pid_dir: Path = PID_DIR,
                 longest: float = IO_WAIT_SECONDS) -> None:
        self.proc = proc
        self.longest = longest  # no look takes longer (a worker keeps it within its timeout)
        self.pid_dir = pid_dir
        self._pids: dict[str, int] = {}  # uuid -> pid
        self._started: dict[int, str | None] = {}  # pid -> its start time when found
        self._scanned = -RESCAN_SECONDS
        self.why: dict[str, str] = {}  # uuid -> why its QEMU was frozen when last looked at

    def pid(self, uuid: str, name: str) -> int | None:
        """The QEMU pid of domain ``uuid`` (named ``name``), or None if it cannot be found."""
        uuid = uuid.lower()
        pid = self._pids.get(uuid)
        if pid is not None:  # checked when found; a domain whose QEMU exits stops running
            return pid
        pid = self._from_pid_file(name, uuid)
        if pid is None and time.monotonic() - self._scanned >= RESCAN_SECONDS:
            self._scan()
            pid = self._pids.get(uuid)
        if pid is not None:
            self._pids[uuid] = pid
            self._started[pid] = self._start_time(pid)
        return pid

    def exited(self, uuid: str) -> bool:
        """Whether the QEMU found for ``uuid`` no longer runs: its pid is gone, or is
        another process's now (another start time). While libvirtd does not answer, the
        last known domain -> QEMU mapping is all there is: this keeps it honest. The pid
        is forgotten (found again, if ever, by its pid file or a scan)."""
        pid = self._pids.get(uuid.lower())
        if pid is None:
            return False
        now = self._start_time(pid)
        # Found by a scan, the pid has no start time yet: this one is its QEMU's.
        if now is not None and now == self._started.setdefault(pid, now):
            return False
        del self._pids[uuid.lower()]
        self._started.pop(pid, None)
        return True

    def _start_time(self, pid: int) -> str | None:
        """Field 22 of /proc/<pid>/stat (clock ticks after boot); None: no such pid."""
        try:
            return _read(f"{self.proc}/{pid}/stat").rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return None

    def forget_except(self, uuids: Iterable[str]) -> None:
        """Drop the pids of domains that no longer run."""
        keep = {u.lower() for u in uuids}
        self._pids = {u: p for u, p in self._pids.items() if u in keep}
        self.why = {u: w for u, w in self.why.items() if u in keep}
        self._started = {p: t for p, t in self._started.items() if p in self._pids.values()}

    def frozen(self, domains: Iterable[tuple[str, str]]) -> set[str]:
        """The uuids, among (uuid, name) pairs, whose QEMU main thread is frozen now:
        it looks stuck and is not scheduled once for as long as ``stuck_for`` says."""
        started = time.monotonic()
        domains = list(domains)
        for uuid, _ in domains:
            self.why.pop(uuid.lower(), None)
        pending = {(uuid, name): seen for uuid, name in domains
                   if (seen := self._check(uuid, name)) is not None}
        frozen: set[str] = set()
        while pending:
            time.sleep(RECHECK_SECONDS)
            elapsed = time.monotonic() - started
            still = {}
            for key, (switches, wait) in pending.items():
                now = self._check(*key)
                if now is None or now[0] != switches:
                    continue  # it moved: busy, not frozen
                if elapsed >= min(wait, self.longest):
                    frozen.add(key[0])
                    self.why[key[0].lower()] = frozen_why(wait)
                else:
                    still[key] = (switches, wait)
            pending = still
        return frozen

    # -- /proc --------------------------------------------------------------
    def _check(self, uuid: str, name: str) -> tuple[int, float] | None:
        """(context switches of the main thread, how long it must stay so) if it looks
        stuck now, else None."""
        pid = self.pid(uuid, name)
        if pid is None:
            return None
        task = f"{self.proc}/{pid}/task/{pid}/"
        try:
            state = thread_state(_read(task + "stat"))
        except (OSError, IndexError):
            self._pids.pop(uuid.lower(), None)  # gone (a restart): found again next time
            return None
        if state not in ("T", "t", "S", "D"):
            return None  # running: nothing more to read (this runs per domain per cycle)
        try:
            wchan = _read(task + "wchan")
        except OSError:  # not root: the state letter alone still tells T and D
            wchan = ""
        wait = stuck_for(state, wchan)
        if wait is None:
            return None
        try:
            return context_switches(_read(task + "status")), wait
        except (OSError, ValueError):
            return None

    def _is_qemu_of(self, pid: int, uuid: str) -> bool:
        try:
            return cmdline_uuid((self.proc / str(pid) / "cmdline").read_bytes()) == uuid
        except OSError:
            return False

    def _from_pid_file(self, name: str, uuid: str) -> int | None:
        if "/" in name or name.startswith("."):
            return None
        try:
            pid = int((self.pid_dir / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_qemu_of(pid, uuid) else None

    def _scan(self) -> None:
        self._scanned = time.monotonic()
        for entry in os.scandir(self.proc):
            if not entry.name.isascii() or not entry.name.isdigit():
                continue
            try:
                uuid = cmdline_uuid((Path(entry.path) / "cmdline").read_bytes())
            except OSError:
                continue
            if uuid is not None:
                self._pids[uuid] = int(entry.name)
