"""Reading, without libvirtd, what libvirtd itself reads from the kernel for a QEMU domain.

The bulk groups cpu-total, vcpu and interface are, in libvirtd, reads of the
domain's cgroup, its vCPU threads in /proc and its tap devices' counters
(kernel_counters.py says exactly which, and parses them). On the same host, as
root, a worker reads them itself: a few µs each, no RPC, no libvirtd thread, and
they keep coming while libvirtd restarts, wedges or is stopped. libvirtd is then
asked only for what needs QEMU or its own state (block, balloon, state, perf).

Chosen per domain: a domain whose QEMU pid is unknown, whose cgroup holds no CPU
accounting, or whose values disagreed with libvirt's keeps libvirtd's groups (logged,
with why) until it is tried again: after one refresh interval, then twice as long each
time it fails again, up to an hour; tried means compared with libvirt first, so no
value goes out from the kernel before they agree. ``agree`` compares both sources for a domain, once
per refresh interval, so a kernel or libvirt change cannot make values silently wrong;
interfaces that libvirt lists differently (one plugged or unplugged since the XML was
read) are not a disagreement: the XML is read again and the check repeated.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vpartcollect import kernel_counters as kc
from vpartcollect.mounts import read_mountinfo
from vpartcollect.samples import Stats
from vpartcollect.worker.inventory import Domain

log = logging.getLogger(__name__)

RETRY_MAX_SECONDS = 3600.0  # the longest a domain waits before the kernel is tried again
RECORD_BUFFER = 16384  # above any one-record file read_record is given (sched: ~2 KiB)


def read_text(path: str) -> str:
    """A kernel file as text, whole: read until a read returns nothing. /proc and sysfs
    files are seq_files, and one read of a seq_file returns about one page however large
    the buffer: /proc/net/dev of a host with 80 devices gave 4,033 of its 10,233 bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:  # one more read (an empty one) for most files: ~0.1 µs
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(fd)


def read_record(path: str) -> str:
    """A kernel file of one record as text (a task's stat, sched, schedstat, comm; a
    cgroup's cpu.stat): one open, one read. These files are made whole before the first
    read returns (a seq_file of one record grows its buffer until the record fits), so a
    read shorter than the buffer is the end of the file and the empty read ``read_text``
    ends with is saved: three of the four syscalls per file left, at every tick, for
    every vCPU. A file that fills the buffer is read on to the end."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, RECORD_BUFFER)
        if len(data) < RECORD_BUFFER:
            return data.decode(errors="replace")
        chunks = [data]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(fd)


def _read_or_none(path: str) -> str | None:
    try:
        return read_record(path)
    except FileNotFoundError:
        return None


def may_have_more_vcpus(listed: int, maximum: int | None) -> bool:
    """Whether a vCPU may have been plugged since the threads were listed: not when all
    the vCPUs libvirt says the domain can have are listed (none can be plugged then),
    so the task directory is looked at only for domains that can grow (or whose maximum
    is not known yet)."""
    return maximum is None or listed < maximum


_REMOTE = ("ssh", "libssh", "libssh2", "tcp", "tls", "ext")


def why_not(enabled: bool, euid: int, driver: str, uri: str) -> str | None:
    """Why the kernel reader cannot stand in for libvirtd on this connection (None: it
    can): it reads this host's /proc and cgroups, as only root may for every QEMU, and
    knows what QEMU domains' counters mean."""
    scheme, _, rest = uri.partition("://")
    transport = scheme.partition("+")[2]
    if not enabled:
        return "kernel_reader = false"
    if transport in _REMOTE or rest.split("/", 1)[0] not in ("", "localhost"):
        return f"{uri} is another host's libvirtd"
    if driver != "QEMU":
        return f"the {driver} driver's domains have no QEMU to read"
    if euid != 0:
        return "not root: other users' QEMU processes cannot be read"
    return None


def cgroup_mounts(mountinfo: str) -> tuple[str | None, str | None]:
    """(where cgroup v2 is mounted, where v1's cpuacct controller is), if anywhere."""
    v2 = v1 = None
    for m in read_mountinfo(mountinfo):
        if m.fstype == "cgroup2" and v2 is None:
            v2 = m.target
        elif m.fstype == "cgroup" and "cpuacct" in m.options.split(",") and v1 is None:
            v1 = m.target
    return v2, v1


@dataclass
class Located:
    """Where one domain's counters are: its QEMU, its cgroup files, its vCPU threads."""

    pid: int
    cpu_files: tuple[str, ...]  # v2: (cpu.stat,); v1: (cpuacct.usage, cpuacct.stat)
    vcpus: dict[int, str] = field(default_factory=dict)  # vCPU -> /proc/<pid>/task/<tid>/
    threads: int = 0  # st_nlink of /proc/<pid>/task when ``vcpus`` was listed
    maximum: int | None = None  # vcpu.maximum, as libvirt last said (the kernel cannot)
    checked: float = -1e18  # monotonic time of the last agreement check
    reread: bool = False  # its XML is being read again: libvirt listed other interfaces
    replugged: bool = False  # checked again: libvirt and the kernel listed other vCPUs


class KernelReader:
    """The kernel-side counters of the domains one worker samples."""

    def __init__(self, pid_of: Callable[[Domain], int | None], proc: str = "/proc",
                 mountinfo: str | None = None, retry: float = 60.0) -> None:
        """``pid_of``: a domain's QEMU pid (qemu_proc finds it), or None; ``retry``: how
        long a domain sent back to libvirtd waits at first before the kernel is tried
        again (the refresh interval)."""
        self.pid_of = pid_of
        self.retry = retry
        self.proc = proc
        if mountinfo is None:
            try:  # many records: read to the end
                mountinfo = read_text(f"{proc}/self/mountinfo")
            except FileNotFoundError:
                mountinfo = ""
        self.v2_root, self.v1_root = cgroup_mounts(mountinfo)
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self.cpus = os.cpu_count() or 1
        self._at: dict[str, Located] = {}
        self.off: dict[str, str] = {}  # uuid -> why libvirtd's groups are used instead
        # uuid -> (monotonic time the kernel is tried again, the wait after that)
        self._retry: dict[str, tuple[float, float]] = {}
        self._sched_wait = True  # whether sched files carry wait_sum (a kernel option)

    def __repr__(self) -> str:
        return (f"<KernelReader v2={self.v2_root} v1-cpuacct={self.v1_root} "
                f"{len(self._at)} domain(s), {len(self.off)} on libvirtd>")

    # -- which domains ------------------------------------------------------
    def covers(self, dom: Domain) -> frozenset[str]:
        """The bulk groups the kernel gives for ``dom`` (empty: ask libvirtd for all)."""
        if dom.interfaces is None or dom.uuid in self.off:
            return frozenset()
        return self._groups(dom)

    def on_trial(self, dom: Domain) -> frozenset[str]:
        """For a domain on libvirtd's groups whose wait is over: the groups the kernel
        would give, to be compared with libvirt's (``agree``) before any is sent."""
        if (dom.interfaces is None or dom.uuid not in self.off
                or time.monotonic() < self._retry[dom.uuid][0]):
            return frozenset()
        return self._groups(dom)

    def _groups(self, dom: Domain) -> frozenset[str]:
        assert dom.interfaces is not None
        at = self._locate(dom)
        if at is None:
            return frozenset()
        groups = {"cpu-total", "vcpu"}
        if all(tap for dev, tap in dom.interfaces if dev):
            groups.add("interface")  # macvtap and the like: libvirtd's orientation rules
        return frozenset(groups)

    def forget_except(self, uuids: Sequence[str]) -> None:
        """Drop what is known of domains that no longer run."""
        keep = set(uuids)
        self._at = {u: a for u, a in self._at.items() if u in keep}
        self.off = {u: r for u, r in self.off.items() if u in keep}
        self._retry = {u: r for u, r in self._retry.items() if u in keep}

    def turn_off(self, dom: Domain, why: str) -> None:
        """Use libvirtd's groups for ``dom`` until it is tried again, and say why: a
        warning the first time, a line at info each time it fails again (less and less
        often: the wait doubles)."""
        again = dom.uuid in self._retry
        wait = self._retry[dom.uuid][1] if again else self.retry
        self._retry[dom.uuid] = (time.monotonic() + wait, min(2 * wait, RETRY_MAX_SECONDS))
        (log.info if again else log.warning)(
            "%s: counters from libvirtd, not the kernel: %s (tried again in %.0f s)",
            dom.name, why, wait)
        self.off[dom.uuid] = why
        self._at.pop(dom.uuid, None)

    def _locate(self, dom: Domain) -> Located | None:
        pid = self.pid_of(dom)
        if pid is None:
            return None  # not found yet (qemu_proc looks again): not worth a line
        at = self._at.get(dom.uuid)
        if at is not None and at.pid == pid:
            return at
        try:
            v2, v1 = kc.cgroup_paths(read_text(f"{self.proc}/{pid}/cgroup"))
        except OSError:
            return None
        group = kc.domain_cgroup(v2) if v2 is not None else None
        if group and self.v2_root and os.path.exists(f"{self.v2_root}{group}/cpu.stat"):
            files: tuple[str, ...] = (f"{self.v2_root}{group}/cpu.stat",)
        elif (group := kc.domain_cgroup(v1.get("cpuacct", "/"))) and self.v1_root:
            files = (f"{self.v1_root}{group}/cpuacct.usage", f"{self.v1_root}{group}/cpuacct.stat")
        else:
            self.turn_off(dom, "its QEMU has no cgroup with cpu accounting")
            return None
        at = self._at[dom.uuid] = Located(pid, files)
        return at

    # -- reading --------------------------------------------------------------
    def net_devices(self, domains: Sequence[Domain]) -> dict[str, list[int]]:
        """/proc/net/dev's counters of these domains' devices, in one read: the file lists
        every device of the host, so reading it per domain would cost domains x devices."""
        wanted = {dev for d in domains for dev, _ in d.interfaces or ()}
        return kc.net_dev(read_text(f"{self.proc}/net/dev"), wanted)

    def read(self, dom: Domain, groups: frozenset[str],
             net: dict[str, list[int]] | None = None) -> Stats | None:
        """``dom``'s counters for ``groups`` (those ``covers`` gave), or None when they
        cannot be read (the domain then goes back to libvirtd's groups). ``net``: what
        ``net_devices`` read for a batch of domains just before (else read here)."""
        at = self._at.get(dom.uuid)
        if at is None:
            return None
        try:
            out: Stats = {}
            if "cpu-total" in groups:
                out.update(self._cpu(at))
            if "vcpu" in groups:
                out.update(self._vcpus(at))
                if at.maximum is not None:
                    out["vcpu.maximum"] = at.maximum
            if "interface" in groups and dom.interfaces is not None:
                counters = self.net_devices([dom]) if net is None else net
                out.update(kc.interface_stats(dom.interfaces, counters))
            return out
        except FileNotFoundError:
            self._at.pop(dom.uuid, None)  # QEMU gone or restarted: located again next time
            return None
        except (OSError, kc.Unreadable) as exc:
            self.turn_off(dom, f"reading {exc}")
            return None

    def _cpu(self, at: Located) -> Stats:
        if len(at.cpu_files) == 1:
            return kc.cpu_from_v2(read_record(at.cpu_files[0]))
        return kc.cpu_from_v1(read_record(at.cpu_files[0]), read_record(at.cpu_files[1]),
                              self.clk_tck)

    def _vcpus(self, at: Located) -> Stats:
        # A vCPU plugged live (setvcpus --live) is a new thread: the task directory's link
        # count (2 + threads) says the threads changed, for one stat() a read. QEMU's I/O
        # workers come and go too; the list is then built again, ~20 small reads.
        # Only for a domain that can still grow (a maximum above what is listed), or
        # whose threads are to be listed afresh (``agree``: threads -1).
        if at.threads < 0 or may_have_more_vcpus(len(at.vcpus), at.maximum):
            threads_now = os.stat(f"{self.proc}/{at.pid}/task").st_nlink
        else:
            threads_now = at.threads
        threads = {}
        for attempt in range(2):
            if not at.vcpus or attempt or threads_now != at.threads:
                at.vcpus, at.threads = self._vcpu_threads(at.pid), threads_now
            try:
                for n, task in at.vcpus.items():
                    sched = _read_or_none(task + "sched") if self._sched_wait else None
                    if sched is not None and "wait_sum" not in sched:
                        self._sched_wait = False  # this kernel keeps none: stop reading it
                    threads[n] = (read_record(task + "stat"), sched,
                                  _read_or_none(task + "schedstat"))
                break
            except FileNotFoundError:
                if attempt:
                    raise
                threads = {}  # a vCPU unplugged (its thread gone): list them again
        return kc.vcpu_stats(threads, self.clk_tck)

    def _vcpu_threads(self, pid: int) -> dict[int, str]:
        out = {}
        base = f"{self.proc}/{pid}/task"
        for tid in os.listdir(base):
            try:
                n = kc.vcpu_number(read_record(f"{base}/{tid}/comm"))
            except OSError:
                continue
            if n is not None:
                out[n] = f"{base}/{tid}/"
        return out

    # -- agreeing with libvirt ----------------------------------------------
    def due(self, dom: Domain, every: float) -> bool:
        """Whether ``dom``'s counters should be compared with libvirt's now (for one on
        libvirtd's groups: whether its wait is over, see ``on_trial``)."""
        if dom.uuid in self.off:
            return time.monotonic() >= self._retry[dom.uuid][0]
        at = self._at.get(dom.uuid)
        return at is not None and time.monotonic() - at.checked >= every

    def agree(self, dom: Domain, libvirt: Stats, groups: frozenset[str],
              elapsed: float) -> bool:
        """Compare libvirt's answer for ``groups`` (read ``elapsed`` s before now) with the
        kernel's, read now; on a difference, log it and go back to libvirtd's groups."""
        at = self._at.get(dom.uuid)
        if at is None:
            return False
        at.checked = time.monotonic()
        if "vcpu.maximum" in libvirt:
            at.maximum = int(libvirt["vcpu.maximum"])
        at.threads = -1  # the vCPU threads listed afresh: nothing plugged goes unseen
        ours = self.read(dom, groups)
        if ours is None:
            return False
        wanted = {k: v for k, v in libvirt.items() if _group_of(k) in groups}
        if ("interface" in groups and not at.reread
                and kc.interface_names(ours) != kc.interface_names(wanted)):
            # A NIC plugged or unplugged since the XML was read: not the kernel's fault.
            log.info("%s: its interfaces changed (libvirt lists %s); reading its XML again",
                     dom.name, ", ".join(kc.interface_names(wanted)) or "none")
            dom.forget_devices()
            at.reread, at.checked = True, -1e18  # checked again once the XML is read
            return False
        if ("vcpu" in groups and not at.replugged
                and kc.vcpu_numbers(ours) != kc.vcpu_numbers(wanted)):
            # A vCPU plugged or unplugged between libvirt's answer and the kernel's read:
            # libvirt learns of it from QEMU's event, up to a tick later on a busy host.
            log.info("%s: its vCPUs changed (libvirt lists %d, the kernel %d); compared "
                     "again at the next tick", dom.name, len(kc.vcpu_numbers(wanted)),
                     len(kc.vcpu_numbers(ours)))
            at.replugged, at.checked = True, -1e18
            return False
        problems = kc.disagreements(ours, wanted, elapsed, self.cpus)
        if problems:
            self.turn_off(dom, "it disagrees with libvirt: " + "; ".join(problems[:4]))
            return False
        at.reread = at.replugged = False
        self._retry.pop(dom.uuid, None)  # agreed: a later disagreement is news again
        if self.off.pop(dom.uuid, None) is not None:
            log.info("%s: counters from the kernel again: they agree with libvirt's", dom.name)
        return True


def _group_of(key: str) -> str:
    head = key.split(".", 1)[0]
    return {"cpu": "cpu-total", "vcpu": "vcpu", "net": "interface"}.get(head, head)
