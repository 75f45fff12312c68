"""The only place that asks libvirt for domain statistics.

Groups the driver answers in bulk are fetched with one
``domainListGetStats(..., NOWAIT)`` per chunk: NOWAIT returns at once, with the
QEMU-free part, for a domain whose monitor job is already held by a hung call.
Groups it does not answer in bulk (libvirt 9's test driver answers only
``state``) fall back to per-domain calls that produce the same keys. Which is
which is decided once per connection, by asking the driver for stats of no
domain at all, so the probe itself can never wait on a QEMU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import libvirt

from vpartcollect.clock import read_clocks
from vpartcollect.samples import Stats
from vpartcollect.worker.datastores import is_file_image
from vpartcollect.worker.extras import QEMU_FREE, add_calls, describe_devices
from vpartcollect.worker.inventory import Domain
from vpartcollect.worker.kernel_reader import KernelReader

log = logging.getLogger(__name__)

GROUPS: dict[str, int] = {
    "state": libvirt.VIR_DOMAIN_STATS_STATE,
    "cpu-total": libvirt.VIR_DOMAIN_STATS_CPU_TOTAL,
    "balloon": libvirt.VIR_DOMAIN_STATS_BALLOON,
    "vcpu": libvirt.VIR_DOMAIN_STATS_VCPU,
    "interface": libvirt.VIR_DOMAIN_STATS_INTERFACE,
    "block": libvirt.VIR_DOMAIN_STATS_BLOCK,
    "perf": libvirt.VIR_DOMAIN_STATS_PERF,
}
_NO_FALLBACK = {"perf"}  # groups no per-domain call gives

# Inactive *and* running matches no domain: the driver checks the groups, touches nothing.
_PROBE_FLAGS = (libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_INACTIVE
                | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
                | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS)
_NOWAIT = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT

_MEMSTAT_KEYS = {"actual": "current", "last_update": "last-update"}
# What libvirtd answers for a domain whose QEMU main thread is frozen, measured on libvirt
# 9.0 with QEMU 7.2 stopped by SIGSTOP: bulk state, interface and perf return at once;
# bulk cpu-total, vcpu, balloon and block take the monitor job and block. Per-domain
# info(), vcpus() and getCPUStats() read cgroups and /proc and return at once.
FROZEN_BULK = ("state", "interface")


@dataclass
class Answer:
    """One domain's statistics, and when libvirt read them: the wall clock just after the
    call that gave the cpu time returned, and the monotonic clock then (rates divide by
    the monotonic time between two reads; the wall clock says whether it stepped)."""

    stats: Stats
    read_at: float
    read_mono: float | None = None  # None: the same as read_at (a clock that never stepped)

    def read_now(self, clocks: tuple[float, float] | None = None) -> None:
        """The statistics were read now (or at ``clocks``: wall, monotonic)."""
        self.read_at, self.read_mono = clocks or read_clocks()


def as_block_info(stats: Stats, sizes: Mapping[str, tuple[int, int]]) -> None:
    """Give bulk ``block.N.allocation``/``physical`` of file images the meaning of
    virDomainGetBlockInfo, which collectd reports as disk_allocation/disk_physical.

    Measured on libvirt 9.0: for an image file, GetBlockInfo's allocation is the
    space the file takes (st_blocks * 512) and its physical size the file's size
    (st_size); the bulk group gives the highest written offset as allocation, and
    as physical the space taken for qcow2 but the file size for raw. Neither can
    be rebuilt from the other, so the image's own stat (``sizes``: path ->
    (st_size, st_blocks * 512), read by the datastore probe) gives both; without
    one, the two are left out rather than sent with the other meaning. Device
    nodes and network disks: both APIs agree (measured), nothing changes.
    """
    count = stats.get("block.count")
    for i in range(count if type(count) is int else 0):
        path = stats.get(f"block.{i}.path")
        if not isinstance(path, str) or not is_file_image(path):
            continue
        size = sizes.get(path)
        if size is None:
            stats.pop(f"block.{i}.allocation", None)
            stats.pop(f"block.{i}.physical", None)
        else:
            stats[f"block.{i}.physical"], stats[f"block.{i}.allocation"] = size


def _bits(groups: Collection[str]) -> int:
    out = 0
    for name in groups:
        out |= GROUPS[name]
    return out


def monitor_answered(stats: Stats) -> bool:
    """True when the stats carry values only QEMU's monitor gives (so it answered).

    NOWAIT stats of a domain whose monitor is held lack block I/O counters and
    balloon.rss; a domain with neither disk nor balloon proves nothing either way.
    """
    if "block.0.name" in stats:
        return "block.0.rd.reqs" in stats
    if "balloon.current" in stats:
        return "balloon.rss" in stats
    return False


def monitor_skipped(stats: Stats) -> bool:
    """True when NOWAIT skipped what only QEMU's monitor gives: the domain has disks
    (or a balloon) but no I/O counters (no balloon.rss). Unlike ``not
    monitor_answered``, a domain with neither says nothing here."""
    if "block.0.name" in stats:
        return "block.0.rd.reqs" not in stats
    return "balloon.current" in stats and "balloon.rss" not in stats


def devices_in(stats: Stats) -> tuple[list[tuple[str, str]], list[str]] | None:
    """(disks as (target, source), interface names) that bulk stats name, or None when
    they carry no block or interface group: libvirt lists the devices every cycle, so a disk added,
    removed or moved to another image (snapshot, pivot) shows here first."""
    count, nets = stats.get("block.count"), stats.get("net.count")
    if type(count) is not int or type(nets) is not int:
        return None
    disks = []
    for i in range(count):
        name, path = stats.get(f"block.{i}.name"), stats.get(f"block.{i}.path", "")
        if isinstance(name, str) and name:
            disks.append((name, path if isinstance(path, str) else ""))
    nics = [n for i in range(nets)
            if isinstance(n := stats.get(f"net.{i}.name"), str) and n]
    return disks, nics


def probe_bulk_groups(conn: Any) -> tuple[list[str], list[str]]:
    """Split GROUPS into (answered in bulk, needing per-domain fallback) for this connection."""
    bulk, fallback = [], []
    for name, bit in GROUPS.items():
        try:
            conn.getAllDomainStats(bit, _PROBE_FLAGS)
            bulk.append(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
                                            libvirt.VIR_ERR_NO_SUPPORT):
                raise
            fallback.append(name)
    return bulk, fallback


class StatsReader:
    """Collects one chunk of domains with the groups split decided at connect time."""

    def __init__(self, conn: Any, bulk: Sequence[str], fallback: Sequence[str],
                 wanted: Collection[str] = tuple(GROUPS),
                 extras: frozenset[str] = frozenset(),
                 kernel: KernelReader | None = None) -> None:
        """``wanted``: the groups the configured metrics need (only those are asked);
        ``extras``: the per-domain calls they need (extras.py); ``kernel``: where the
        groups the kernel knows are read instead of asked, for the domains it covers."""
        self.conn = conn
        self.wanted = frozenset(wanted)
        self.bulk_bits = 0
        for name in bulk:
            if name in wanted:
                self.bulk_bits |= GROUPS[name]
        self.fallback = [g for g in fallback if g in wanted and g not in _NO_FALLBACK]
        self.extras = extras
        self.kernel = kernel
        self._unsupported: set[str] = set()  # per-domain calls this driver refuses

    def __repr__(self) -> str:
        return (f"<StatsReader bulk={self.bulk_bits:#x} per-domain={','.join(self.fallback)} "
                f"on {self.conn!r}>")

    @property
    def block_in_bulk(self) -> bool:
        """Whether block stats come from the bulk call (else from per-domain calls,
        whose blockInfo already has GetBlockInfo's meaning)."""
        return bool(self.bulk_bits & GROUPS["block"])

    def collect(self, domains: Sequence[Domain], block: bool = True) -> dict[str, Answer]:
        """Raw stats per uuid; a domain that vanished mid-call is simply absent.

        ``block=False`` leaves out the block group: it makes QEMU stat() each image,
        which hangs QEMU on a datastore that does not answer.
        """
        bits = self.bulk_bits if block else self.bulk_bits & ~GROUPS["block"]
        fallback = [g for g in self.fallback if block or g != "block"]
        domains = self._bind(domains)
        out: dict[str, Answer] = {}
        for covered, group in self._by_kernel(domains).items():
            asked, rest = bits & ~_bits(covered), [g for g in fallback if g not in covered]
            out.update(self._collect(group, asked, rest) if asked or rest
                       else {d.uuid: Answer({}, 0.0) for d in group})
            self._from_kernel(group, out, covered)
        out = {uuid: answer for uuid, answer in out.items() if answer.stats}
        self._extras(domains, out, self.extras)
        return out

    def kernel_only(self, domains: Sequence[Domain]) -> dict[str, Answer]:
        """What the kernel gives of ``domains`` without asking libvirtd anything (while it
        does not answer): cpu, vCPUs and interfaces of the domains it covers."""
        out = {d.uuid: Answer({}, 0.0) for d in domains}
        for covered, group in self._by_kernel(domains).items():
            self._from_kernel(group, out, covered)
        return {uuid: answer for uuid, answer in out.items() if answer.stats}

    def check_kernel(self, domains: Sequence[Domain], every: float) -> None:
        """Compare the kernel's counters with libvirt's for the domains due a check, and
        those on libvirtd's groups due a trial (one bulk call, NOWAIT); a domain whose two
        sources differ goes (or stays) back to libvirtd."""
        if self.kernel is None:
            return
        kernel = self.kernel
        due = {d.uuid: (d, covered) for d in self._bind(domains)
               if (covered := (kernel.covers(d) or kernel.on_trial(d)) & self.wanted)
               and kernel.due(d, every)}
        if not due:
            return
        started = time.monotonic()
        bits = _bits(frozenset().union(*(c for _, c in due.values()))) & self.bulk_bits
        for handle, stats in self._bulk([d for d, _ in due.values()], bits):
            dom, covered = due[handle.UUIDString()]
            self.kernel.agree(dom, stats, covered, time.monotonic() - started)

    def _by_kernel(self, domains: Sequence[Domain]) -> dict[frozenset[str], list[Domain]]:
        """The domains by the groups the kernel gives for them (usually one set)."""
        out: dict[frozenset[str], list[Domain]] = {}
        for dom in domains:
            covered = self.kernel.covers(dom) & self.wanted if self.kernel else frozenset()
            out.setdefault(covered, []).append(dom)
        return out

    def _from_kernel(self, domains: Sequence[Domain], out: dict[str, Answer],
                     covered: frozenset[str]) -> None:
        """Add the kernel's counters to each answer, read now (its read time with them;
        the batch's /proc/net/dev is read once, just before, at a steady offset)."""
        if not covered or self.kernel is None:
            return
        net = None
        if "interface" in covered:
            try:
                net = self.kernel.net_devices(domains)
            except OSError:
                net = None  # each domain tries on its own, and says why if it fails
        for dom in domains:
            answer = out.get(dom.uuid)
            if answer is None:
                continue  # it stopped meanwhile
            stats = self.kernel.read(dom, covered, net)
            if stats is not None:
                answer.stats.update(stats)
                answer.read_now()

    def collect_frozen(self, domains: Sequence[Domain]) -> dict[str, Answer]:
        """What libvirtd answers without the QEMU monitor, for domains whose QEMU is frozen."""
        bits = _bits(FROZEN_BULK) & self.bulk_bits
        domains = self._bind(domains)
        out: dict[str, Answer] = {}
        for covered, group in self._by_kernel(domains).items():
            out.update(self._collect(group, bits & ~_bits(covered),
                                     [g for g in self.fallback
                                      if g in FROZEN_BULK and g not in covered]))
            for dom in group:
                self._frozen_calls(dom, out, covered)
            self._from_kernel(group, out, covered)
        return {uuid: answer for uuid, answer in out.items() if answer.stats}

    def _frozen_calls(self, dom: Domain, out: dict[str, Answer],
                      covered: frozenset[str]) -> None:
        """The per-domain calls that answer without QEMU's monitor, for what the kernel
        does not give."""
        answer = out.setdefault(dom.uuid, Answer({}, *read_clocks()))
        stats, h = answer.stats, dom.handle
        try:
            info = h.info()
            stats["balloon.maximum"], stats["balloon.current"] = info[1], info[2]
            if "cpu-total" not in covered and not self.bulk_bits & GROUPS["cpu-total"]:
                # The other routes read this driver's cpu time from info() (``_fallback``):
                # the same counter here, or a rate across a route switch is not the truth
                # (the test driver's getCPUStats is another counter altogether).
                stats["cpu.time"] = info[4]
                answer.read_now()
            elif "cpu-total" not in covered:
                # Bulk cpu-total needs the monitor job; getCPUStats reads the same cgroup
                # counter without it (qemu driver).
                try:
                    cpu = (self._try("getCPUStats", h.getCPUStats, True) or [{}])[0]
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    # No cpuacct cgroup: bulk reads /proc then, as info() does.
                    cpu = {}
                answer.read_now()
                for key, name in (("cpu_time", "time"), ("user_time", "user"),
                                  ("system_time", "system")):
                    if key in cpu:
                        stats[f"cpu.{name}"] = cpu[key]
                if "cpu.time" not in stats:
                    stats["cpu.time"] = info[4]
            if "vcpu" not in covered:
                self._fallback("vcpu", dom, stats)
            add_calls(dom, stats, self.extras & frozenset(QEMU_FREE), self._unsupported)
            describe_devices(dom, stats)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                out.pop(dom.uuid, None)
                return
            log.debug("%s: stats of a frozen domain failed: %s", dom.name, exc)

    def _bind(self, domains: Sequence[Domain]) -> list[Domain]:
        """The domains, each with a handle of this reader's connection: looked up (one call
        each) when it has none yet or after the worker moved to a new connection; gone
        ones left out."""
        out = []
        for dom in domains:
            if dom.handle is None or dom.handle.connect() is not self.conn:
                try:
                    dom.handle = self.conn.lookupByUUIDString(dom.uuid)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue
                    raise
            out.append(dom)
        return out

    def _collect(self, domains: Sequence[Domain], bits: int,
                 fallback: Sequence[str]) -> dict[str, Answer]:
        out = {d.uuid: Answer({}, 0.0) for d in domains}
        if bits and domains:
            bulk = self._bulk(domains, bits)
            returned = read_clocks()
            for handle, stats in bulk:
                answer = out.setdefault(handle.UUIDString(), Answer({}, 0.0))
                answer.stats.update(stats)
                answer.read_now(returned)
        for dom in domains:
            answer = out[dom.uuid]
            for group in fallback:
                try:
                    self._fallback(group, dom, answer.stats)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        out.pop(dom.uuid, None)
                        break
                    log.debug("%s: %s stats failed: %s", dom.name, group, exc)
                if group == "cpu-total":  # the counter a rate most depends on was just read
                    answer.read_now()
            if not answer.read_at:
                answer.read_now()
        return {uuid: answer for uuid, answer in out.items() if answer.stats}

    def _extras(self, domains: Sequence[Domain], out: dict[str, Answer],
                extras: frozenset[str]) -> None:
        """What collectd asks per domain besides the stats, and what the XML says of the
        devices they name (extras.py)."""
        for dom in domains:
            answer = out.get(dom.uuid)
            if answer is None:
                continue
            try:
                add_calls(dom, answer.stats, extras, self._unsupported)
            except libvirt.libvirtError:  # it stopped meanwhile
                out.pop(dom.uuid, None)
                continue
            describe_devices(dom, answer.stats)

    def _bulk(self, domains: Sequence[Domain], bits: int) -> list[tuple[Any, Stats]]:
        handles = [d.handle for d in domains]
        try:
            result: list[tuple[Any, Stats]] = self.conn.domainListGetStats(
                handles, bits, _NOWAIT)
            return result
        except libvirt.libvirtError:
            if len(handles) == 1:
                raise
        # One domain stopped mid-call and failed the chunk: ask each alone.
        results = []
        for dom in domains:
            try:
                results.extend(self.conn.domainListGetStats([dom.handle], bits, _NOWAIT))
            except libvirt.libvirtError as exc:
                log.debug("%s: bulk stats failed: %s", dom.name, exc)
        return results

    def _try(self, call: str, fn: Any, *args: Any) -> Any:
        """Run a per-domain call, remembering calls the driver does not support at all."""
        if call in self._unsupported:
            return None
        try:
            return fn(*args)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                self._unsupported.add(call)
                return None
            raise

    def _fallback(self, group: str, dom: Domain, out: Stats) -> None:
        h = dom.handle
        if group == "state":
            state, reason = h.state()
            out["state.state"], out["state.reason"] = state, reason
        elif group == "cpu-total":
            out["cpu.time"] = h.info()[4]
        elif group == "balloon":
            info = h.info()
            out["balloon.maximum"], out["balloon.current"] = info[1], info[2]
            mem = self._try("memoryStats", h.memoryStats) or {}
            for key, value in mem.items():
                out[f"balloon.{_MEMSTAT_KEYS.get(key, key)}"] = value
        elif group == "vcpu":
            vcpus = self._try("vcpus", h.vcpus)
            if vcpus:
                out["vcpu.current"] = out["vcpu.maximum"] = len(vcpus[0])
                for number, state, cpu_time, _cpu in vcpus[0]:
                    out[f"vcpu.{number}.state"] = state
                    out[f"vcpu.{number}.time"] = cpu_time
        elif group == "interface":
            out["net.count"] = len(dom.nics)
            for i, dev in enumerate(dom.nics):
                out[f"net.{i}.name"] = dev
                st = self._try("interfaceStats", h.interfaceStats, dev)
                if st:
                    for j, key in enumerate(("rx.bytes", "rx.pkts", "rx.errs", "rx.drop",
                                             "tx.bytes", "tx.pkts", "tx.errs", "tx.drop")):
                        out[f"net.{i}.{key}"] = st[j]
        elif group == "block":
            disks = dom.disks or []
            out["block.count"] = len(disks)
            for i, (dev, source) in enumerate(disks):
                out[f"block.{i}.name"] = dev
                if source:
                    out[f"block.{i}.path"] = source
                st = self._try("blockStats", h.blockStats, dev)
                if st:
                    for j, key in enumerate(("rd.reqs", "rd.bytes", "wr.reqs", "wr.bytes")):
                        out[f"block.{i}.{key}"] = st[j]
                info = self._try("blockInfo", h.blockInfo, dev)
                if info:
                    for j, key in enumerate(("capacity", "allocation", "physical")):
                        out[f"block.{i}.{key}"] = info[j]
