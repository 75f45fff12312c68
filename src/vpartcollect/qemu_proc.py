"""Is a domain's QEMU frozen? Its main thread's state in /proc, read before asking libvirt.

QEMU's main thread serves the monitor. When it is stopped (``T``: SIGSTOP), in
uninterruptible sleep (``D``: a hard NFS mount) or asleep waiting on a
filesystem request (``S`` with a FUSE/NFS wchan: a stat() of a dead image),
every monitor-bound libvirt call on that domain blocks, and each blocked call
holds one libvirtd worker thread. Two reads a few tens of milliseconds apart must
agree, so a passing D-state blip under normal I/O does not count.

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
RECHECK_SECONDS = 0.03  # the second look that tells a frozen thread from a passing blip
RESCAN_SECONDS = 10.0  # how often /proc is scanned again for domains without a pid

# Kernel functions a thread sleeps in while waiting on a filesystem that may be dead.
_FS_WAIT = re.compile(r"request_wait_answer|fuse_|nfs|rpc_|__rpc_|cifs|smb2?_|ceph_"
                      r"|wait_for_response")


def thread_state(stat_text: str) -> str:
    """The state letter of a /proc/<pid>/task/<tid>/stat line (the name may hold ')')."""
    return stat_text.rsplit(")", 1)[1].split()[0]


def looks_frozen(state: str, wchan: str) -> bool:
    """Whether a main thread in ``state`` sleeping in ``wchan`` cannot serve its monitor."""
    if state in ("T", "t", "D"):
        return True
    return state == "S" and bool(_FS_WAIT.match(wchan))


def cmdline_uuid(cmdline: bytes) -> str | None:
    """The value of ``-uuid`` in a NUL-separated QEMU command line, if any."""
    args = cmdline.split(b"\0")
    for i, arg in enumerate(args[:-1]):
        if arg == b"-uuid":
            return args[i + 1].decode(errors="replace").lower()
    return None


class QemuProcesses:
    """QEMU pids of running domains, found once and checked each cycle."""

    def __init__(self, proc: Path = Path("/proc"), pid_dir: Path = PID_DIR) -> None:
        self.proc = proc
        self.pid_dir = pid_dir
        self._pids: dict[str, int] = {}  # uuid -> pid
        self._scanned = -RESCAN_SECONDS

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
        return pid

    def forget_except(self, uuids: Iterable[str]) -> None:
        """Drop the pids of domains that no longer run."""
        keep = {u.lower() for u in uuids}
        self._pids = {u: p for u, p in self._pids.items() if u in keep}

    def frozen(self, domains: Iterable[tuple[str, str]]) -> set[str]:
        """The uuids, among (uuid, name) pairs, whose QEMU main thread is frozen now."""
        pairs = list(domains)
        first = [(uuid, name) for uuid, name in pairs if self._check(uuid, name)]
        if not first:
            return set()
        time.sleep(RECHECK_SECONDS)
        return {uuid for uuid, name in first if self._check(uuid, name)}

    # -- /proc --------------------------------------------------------------
    def _check(self, uuid: str, name: str) -> bool:
        pid = self.pid(uuid, name)
        if pid is None:
            return False
        task = self.proc / str(pid) / "task" / str(pid)
        try:
            state = thread_state((task / "stat").read_text())
        except (OSError, IndexError):
            self._pids.pop(uuid.lower(), None)  # gone (a restart): found again next time
            return False
        try:
            wchan = (task / "wchan").read_text()
        except OSError:  # not root: the state letter alone still tells T and D
            wchan = ""
        return looks_frozen(state, wchan)

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
