"""Which collectd values a domain's raw statistics give, by the rules of collectd 5.12's virt
plugin and its options (ExtraStats, device formats and filters). Pure.

Input is a flat dict keyed like virConnectGetAllDomainStats (``cpu.time``,
``block.0.rd.bytes``, ``net.1.tx.pkts`` ...), with what the worker adds from
per-domain calls and the domain XML (``net.N.mac``, ``block.N.source``,
``vcpu.N.pin``, ``disk_error.<dev>``, ``job.<field>``). Output is the values
collectd would submit, with their types.db names and kinds.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from vpartcollect.ere import EreError, compile_ere, ere_search
from vpartcollect.samples import Stats, StatValue

# ExtraStats selectors of collectd 5.12, and what each adds.
EXTRA_STATS = ("disk", "pcpu", "cpu_util", "domain_state", "perf", "vcpupin", "disk_err",
               "fs_info", "job_stats_completed", "job_stats_background", "disk_allocation",
               "disk_capacity", "disk_physical", "memory", "vcpu")
RUNNING = 1  # VIR_DOMAIN_RUNNING: collectd reports only the state of any other domain


def regex_entry(entry: str) -> str | None:
    """The regular expression of a ``/regex/`` entry (collectd: longer than two
    characters, a slash at both ends), None for a name matched exactly."""
    return entry[1:-1] if len(entry) > 2 and entry[0] == "/" == entry[-1] else None


def entry_error(entry: str) -> str | None:
    """Why a Domain / BlockDevice / InterfaceDevice entry cannot be read as collectd reads
    it (a ``/regex/`` that is no POSIX extended regular expression we can translate)."""
    if (rx := regex_entry(entry)) is None:
        return None
    try:
        compile_ere(rx)
    except EreError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class IgnoreList:
    """collectd's ignorelist: entries matched exactly, or ``/regex/`` searched (POSIX
    extended regular expressions, as collectd's regcomp reads them: ere.py); with
    ``ignore_selected`` the listed ones are left out, else only they are kept. An empty
    list keeps everything. A regex that cannot be translated raises EreError."""

    entries: tuple[str, ...] = ()
    ignore_selected: bool = False
    _patterns: tuple[re.Pattern[bytes] | str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        compiled = tuple(e if (rx := regex_entry(e)) is None else compile_ere(rx)
                         for e in self.entries)
        object.__setattr__(self, "_patterns", compiled)

    def ignored(self, entry: str) -> bool:
        """Whether collectd leaves ``entry`` out."""
        if not self._patterns or not entry:
            return False
        for pattern in self._patterns:
            hit = pattern == entry if isinstance(pattern, str) else ere_search(pattern, entry)
            if hit:
                return self.ignore_selected
        return not self.ignore_selected


@dataclass(frozen=True)
class Selection:
    """What collectd's virt options select (the defaults are collectd's)."""

    extra: frozenset[str] = frozenset()
    interface_format: str = "name"  # name | address | number
    block_format: str = "target"  # target | source
    block_basename: bool = False
    block_devices: IgnoreList = IgnoreList()
    interface_devices: IgnoreList = IgnoreList()
    report_block: bool = True
    report_net: bool = True


@dataclass(frozen=True)
class Value:
    """One collectd data source and where it comes from in the raw stats."""

    key: str  # raw stats key, e.g. "block.0.rd.bytes"
    type: str
    type_instance: str
    ds: str  # its name in types.db ("value", "read", "rx" ...)
    several_ds: bool  # the type has more than one: write_graphite always appends the ds
    counter: bool  # DERIVE: a rate when store_rates is on
    scale: float = 1


# bulk-stats suffix -> (collectd type, ds, counter, ExtraStats needed or None)
_BLOCK: dict[str, tuple[str, str, bool, str | None]] = {
    "rd.reqs": ("disk_ops", "read", True, None),
    "wr.reqs": ("disk_ops", "write", True, None),
    "rd.bytes": ("disk_octets", "read", True, None),
    "wr.bytes": ("disk_octets", "write", True, None),
    "rd.times": ("disk_time", "read", True, "disk"),
    "wr.times": ("disk_time", "write", True, "disk"),
}
_BLOCK_INFO = {"allocation": "disk_allocation", "capacity": "disk_capacity",
               "physical": "disk_physical"}
_NET = {"rx.bytes": ("if_octets", "rx"), "tx.bytes": ("if_octets", "tx"),
        "rx.pkts": ("if_packets", "rx"), "tx.pkts": ("if_packets", "tx"),
        "rx.errs": ("if_errors", "rx"), "tx.errs": ("if_errors", "tx"),
        "rx.drop": ("if_dropped", "rx"), "tx.drop": ("if_dropped", "tx")}
# balloon.<key> (KiB) -> memory-<type_instance> (bytes): what virDomainMemoryStats gives
# collectd under ExtraStats "memory" (swap and faults go elsewhere, last_update and the
# hugetlb counters nowhere).
_MEMORY = {"current": "actual_balloon", "rss": "rss", "unused": "unused",
           "available": "available", "usable": "usable", "disk_caches": "disk_caches"}


def _num(value: StatValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _devices(stats: Stats, group: str) -> Iterator[tuple[int, str]]:
    """(index, device name) of each ``<group>.N.name`` present."""
    count = _num(stats.get(f"{group}.count"))
    for i in range(int(count or 0)):
        name = stats.get(f"{group}.{i}.name")
        if isinstance(name, str) and name:
            yield i, name


def block_instance(stats: Stats, i: int, target: str,
                   selection: Selection) -> tuple[str, str] | None:
    """(type instance, what the BlockDevice filter matches) of one disk: its target, or
    its source (file or device; None without one, as collectd leaves it out), or that
    source's base name (the filter still matches the whole source)."""
    if selection.block_format == "target":
        return target, target
    source = stats.get(f"block.{i}.source")
    if not isinstance(source, str) or not source:
        return None
    return (posixpath.basename(source) if selection.block_basename else source), source


def interface_instance(stats: Stats, i: int, name: str,
                       selection: Selection) -> tuple[str, str] | None:
    """(type instance, what the InterfaceDevice filter matches) of one interface."""
    if selection.interface_format == "address":
        mac = stats.get(f"net.{i}.mac")
        return (mac, mac) if isinstance(mac, str) and mac else None
    if selection.interface_format == "number":
        number = stats.get(f"net.{i}.number")
        if type(number) is not int:
            return None
        return f"interface-{number}", str(number)
    return name, name


_JOB_NOT_PARAMETERS = frozenset({"job.type"})
# Bounded numbers: a key with a longer one is not libvirt's, and int() of a few thousand
# digits raises (Python's conversion limit) instead of giving a vCPU number.
_PIN = re.compile(r"vcpu\.(\d{1,9})\.pin\.(\d{1,9})$")
_VCPU_TIME = re.compile(r"vcpu\.(\d{1,9})\.time$")


class _Values:
    """The values of one domain, collected in collectd's order."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.out: list[Value] = []

    def add(self, key: str, typ: str, inst: str, ds: str, several: bool, counter: bool,
            scale: float = 1) -> None:
        if _num(self.stats.get(key)) is not None:
            self.out.append(Value(key, typ, inst, ds, several, counter, scale))

    def cpu_and_memory(self, extra: frozenset[str]) -> None:
        stats = self.stats
        if "pcpu" in extra and (_num(stats.get("cpu.user")) or _num(stats.get("cpu.system"))):
            self.add("cpu.user", "ps_cputime", "", "user", True, True)
            self.add("cpu.system", "ps_cputime", "", "syst", True, True)
        if "cpu_util" in extra:
            self.add("cpu.time", "percent", "virt_cpu_total", "value", False, False)
        self.add("cpu.time", "virt_cpu_total", "", "value", False, True)
        self.add("balloon.current", "memory", "total", "value", False, False, 1024)
        if "vcpu" in extra:
            # By number, as collectd keys them: with vCPU 1 offline they are 0, 2, 3.
            for n, key in sorted((int(m[1]), k) for k in stats if (m := _VCPU_TIME.match(k))):
                self.add(key, "virt_vcpu", str(n), "value", False, True)
        if "vcpupin" in extra:
            pins = sorted((int(m[1]), int(m[2]), k) for k in stats if (m := _PIN.match(k)))
            for vcpu, cpu, key in pins:
                self.add(key, "cpu_affinity", f"vcpu_{vcpu}-cpu_{cpu}", "value", False, False)
        if "memory" in extra:
            self.memory()

    def memory(self) -> None:
        stats = self.stats
        for key, inst in _MEMORY.items():
            self.add(f"balloon.{key}", "memory", inst, "value", False, False, 1024)
        if _num(stats.get("balloon.swap_in")) or _num(stats.get("balloon.swap_out")):
            self.add("balloon.swap_in", "swap_io", "in", "value", False, True)
            self.add("balloon.swap_out", "swap_io", "out", "value", False, True)
        if _num(stats.get("balloon.minor_fault")) or _num(stats.get("balloon.major_fault")):
            self.add("balloon.minor_fault", "ps_pagefaults", "", "minflt", True, True)
            self.add("balloon.major_fault", "ps_pagefaults", "", "majflt", True, True)

    def disk(self, prefix: str, inst: str, extra: frozenset[str]) -> None:
        for suffix, (typ, ds, counter, needs) in _BLOCK.items():
            if needs is None or needs in extra:
                self.add(prefix + suffix, typ, inst, ds, True, counter)
        if "disk" in extra:
            self.add(prefix + "fl.reqs", "total_requests", f"flush-{inst}", "value", False,
                     True)
            # collectd labels fl_total_times (ns) as ms but divides by 1000; we send ms.
            self.add(prefix + "fl.times", "total_time_in_ms", f"flush-{inst}", "value",
                     False, True, 1e-6)
        if isinstance(self.stats.get(prefix + "source"), str):  # GetBlockInfo needs one
            for suffix, typ in _BLOCK_INFO.items():
                if typ in extra:
                    self.add(prefix + suffix, typ, inst, "value", False, False)

    def keyed(self, head: str, typ: str, counter: bool, instance: str = "",
              skip: frozenset[str] = frozenset()) -> None:
        """Values whose raw keys start with ``head`` (but ``skip``): one type instance
        each."""
        for key in sorted(k for k in self.stats if k.startswith(head) and k not in skip):
            inst = key.replace(".", "_", 1) if instance == "perf" else key[len(head):]
            self.add(key, typ, inst, "value", False, counter)


def collectd_values(stats: Stats, domain: str, selection: Selection) -> list[Value]:
    """The values collectd would submit for a domain with these raw stats."""
    values = _Values(stats)
    extra = selection.extra
    if "domain_state" in extra:
        values.add("state.state", "domain_state", "", "state", True, False)
        values.add("state.reason", "domain_state", "", "reason", True, False)
    state = _num(stats.get("state.state"))
    if state is not None and state != RUNNING:
        return values.out
    values.cpu_and_memory(extra)
    if selection.report_block:
        for i, target in _devices(stats, "block"):
            disk = block_instance(stats, i, target, selection)
            if disk is not None and not selection.block_devices.ignored(f"{domain}:{disk[1]}"):
                values.disk(f"block.{i}.", disk[0], extra)
    if "disk_err" in extra:
        values.keyed("disk_error.", "disk_error", False)
    if selection.report_net:
        for i, name in _devices(stats, "net"):
            nic = interface_instance(stats, i, name, selection)
            if nic is not None and not selection.interface_devices.ignored(f"{domain}:{nic[1]}"):
                for suffix, (typ, ds) in _NET.items():
                    values.add(f"net.{i}.{suffix}", typ, nic[0], ds, True, True)
    if "perf" in extra:
        values.keyed("perf.", "perf", True, instance="perf")
    if extra & {"job_stats_completed", "job_stats_background"}:
        # collectd submits the job's typed parameters only: none when no job runs.
        # libvirt-python adds the job type (an out-parameter) to the same dict.
        values.keyed("job.", "job_stats", True, skip=_JOB_NOT_PARAMETERS)
    return values.out


def needed_groups(selection: Selection) -> set[str]:
    """The libvirt bulk stats groups these values need: only what is asked for."""
    groups = {"state", "cpu-total", "balloon"}  # running or not; virt_cpu_total, memory
    if selection.extra & {"vcpu", "vcpupin"}:
        groups.add("vcpu")
    if selection.report_net:
        groups.add("interface")
    if selection.report_block:
        groups.add("block")
    if "perf" in selection.extra:
        groups.add("perf")
    return groups


def unknown_extra_stats(names: Iterable[str]) -> list[str]:
    """The ExtraStats selectors collectd 5.12 does not know (case-insensitive)."""
    return [n for n in names if n.lower() not in EXTRA_STATS]


def parse_extra_stats(names: Sequence[str]) -> frozenset[str]:
    """Selectors as collectd reads them: case-insensitive."""
    return frozenset(n.lower() for n in names)
