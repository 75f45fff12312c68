"""Raw libvirt statistics -> collectd-compatible Graphite metrics: mapping, naming, rates.

Input is a flat dict keyed like virConnectGetAllDomainStats (``cpu.time``,
``block.0.rd.bytes``, ``net.1.tx.pkts`` ...). Output paths are what collectd
5.12's virt plugin writes through write_graphite with default options:
``<host>.virt.<type>[-<type_instance>][.<ds>]``.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from vpartcollect.rates import RateTracker
from vpartcollect.samples import DomainSample, Stats, StatValue

PLUGIN = "virt"

# Characters write_graphite escapes inside one field ('.', whitespace, control)
# and over the whole path (\t " \ : ! , / ( )); we also escape everything that
# is not printable ASCII so that no name can add a level or a line.
_UNSAFE = re.compile(r"[^\x21-\x7e]|[.\"\\:!,/()]")

HOSTNAME_FIELDS = ("name", "uuid", "hostname", "metadata")
PLUGIN_INSTANCE_FIELDS = ("name", "uuid")


def escape_part(text: str, escape: str = "_") -> str:
    """Make one path component safe: every separator, blank, control or non-ASCII char -> escape."""
    return _UNSAFE.sub(escape, text)


@dataclass(frozen=True)
class Source:
    """Where one collectd data source comes from in the raw stats."""

    key: str  # raw stats key, e.g. "block.0.rd.bytes"
    type: str
    type_instance: str
    ds: str | None  # None: single-source type, the path has no ds suffix
    counter: bool  # DERIVE in collectd's types.db: sent as a rate when store_rates is on
    scale: float = 1


# bulk-stats suffix -> (collectd type, ds, counter)
_BLOCK = {
    "rd.reqs": ("disk_ops", "read", True),
    "wr.reqs": ("disk_ops", "write", True),
    "rd.bytes": ("disk_octets", "read", True),
    "wr.bytes": ("disk_octets", "write", True),
    "rd.times": ("disk_time", "read", True),
    "wr.times": ("disk_time", "write", True),
    "allocation": ("disk_allocation", None, False),
    "capacity": ("disk_capacity", None, False),
    "physical": ("disk_physical", None, False),
}
_NET = {
    "rx.bytes": ("if_octets", "rx"),
    "tx.bytes": ("if_octets", "tx"),
    "rx.pkts": ("if_packets", "rx"),
    "tx.pkts": ("if_packets", "tx"),
    "rx.errs": ("if_errors", "rx"),
    "tx.errs": ("if_errors", "tx"),
    "rx.drop": ("if_dropped", "rx"),
    "tx.drop": ("if_dropped", "tx"),
}
# balloon.<key> (KiB) -> memory-<type_instance> (bytes), as collectd's memory_stats_submit
_BALLOON = {
    "current": "actual_balloon",
    "rss": "rss",
    "swap_in": "swap_in",
    "swap_out": "swap_out",
    "major_fault": "major_fault",
    "minor_fault": "minor_fault",
    "unused": "unused",
    "available": "available",
    "usable": "usable",
    "last-update": "last_update",
    "disk_caches": "disk_caches",
    "hugetlb_pgalloc": "hugetlb_pgalloc",
    "hugetlb_pgfail": "hugetlb_pgfail",
}
# Counts of pages/faults/timestamps are not KiB.
_BALLOON_UNSCALED = {"major_fault", "minor_fault", "last-update", "hugetlb_pgalloc",
                     "hugetlb_pgfail"}


def _num(value: StatValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _devices(stats: Stats, group: str) -> Iterator[tuple[str, str]]:
    """(index prefix, device name) of each ``<group>.N.name`` present."""
    count = _num(stats.get(f"{group}.count"))
    if count is None:
        return
    for i in range(int(count)):
        name = stats.get(f"{group}.{i}.name")
        if isinstance(name, str) and name:
            yield f"{group}.{i}.", name


def collectd_sources(stats: Stats) -> list[Source]:
    """Which collectd values a domain's raw stats hold (types.db names and kinds)."""
    out: list[Source] = []

    def add(key: str, typ: str, inst: str, ds: str | None, counter: bool,
            scale: float = 1) -> None:
        if _num(stats.get(key)) is not None:
            out.append(Source(key, typ, inst, ds, counter, scale))

    add("cpu.time", "virt_cpu_total", "", None, True)
    if "cpu.user" in stats and "cpu.system" in stats:
        add("cpu.user", "ps_cputime", "", "user", True)
        add("cpu.system", "ps_cputime", "", "syst", True)
    vcpus = _num(stats.get("vcpu.maximum", stats.get("vcpu.current")))
    for i in range(int(vcpus or 0)):
        add(f"vcpu.{i}.time", "virt_vcpu", str(i), None, True)
    add("balloon.current", "memory", "total", None, False, 1024)
    for key, inst in _BALLOON.items():
        add(f"balloon.{key}", "memory", inst, None, False,
            1 if key in _BALLOON_UNSCALED else 1024)
    for prefix, dev in _devices(stats, "block"):
        for suffix, (typ, ds, counter) in _BLOCK.items():
            add(prefix + suffix, typ, dev, ds, counter)
        add(prefix + "fl.reqs", "total_requests", f"flush-{dev}", None, True)
        # collectd labels fl_total_times (ns) as ms but divides by 1000; we send real ms.
        add(prefix + "fl.times", "total_time_in_ms", f"flush-{dev}", None, True, 1e-6)
    for prefix, dev in _devices(stats, "net"):
        for suffix, (typ, ds) in _NET.items():
            add(prefix + suffix, typ, dev, ds, True)
    add("state.state", "domain_state", "", "state", False)
    add("state.reason", "domain_state", "", "reason", False)
    return out


@dataclass(frozen=True)
class Naming:
    """How paths are built; defaults are collectd's virt + write_graphite defaults."""

    prefix: str = ""
    postfix: str = ""
    escape: str = "_"
    hostname: str = "localhost"
    hostname_format: tuple[str, ...] = ("name",)
    plugin_instance_format: tuple[str, ...] = ()

    def _fields(self, fields: tuple[str, ...], name: str, uuid: str,
                label: str | None = None) -> str:
        # "metadata" falls back to the name for a domain that has no such value.
        parts = {"name": name, "uuid": uuid, "hostname": self.hostname,
                 "metadata": label or name}
        # collectd joins several fields with ':', which write_graphite then escapes.
        return ":".join(parts[f] for f in fields)

    def domain_prefix(self, name: str, uuid: str, label: str | None = None) -> str:
        """``<prefix><host><postfix>.virt[-<plugin_instance>].`` for one domain."""
        host = escape_part(self._fields(self.hostname_format, name, uuid, label), self.escape)
        plugin = PLUGIN
        if self.plugin_instance_format:
            inst = self._fields(self.plugin_instance_format, name, uuid)
            plugin = f"{PLUGIN}-{escape_part(inst, self.escape)}"
        return f"{self.prefix}{host}{self.postfix}.{plugin}."

    def value_suffix(self, value: Source) -> str:
        """``<type>[-<type_instance>][.<ds>]`` with the instance escaped."""
        name = value.type
        if value.type_instance:
            name = f"{name}-{escape_part(value.type_instance, self.escape)}"
        return f"{name}.{value.ds}" if value.ds else name

    def self_path(self, instance: int | None, metric: str) -> str:
        """Path of one of the collector's own metrics (per instance, or global)."""
        host = escape_part(self.hostname, self.escape)
        plugin = "vpartcollect" if instance is None else f"vpartcollect-virt-{instance}"
        return f"{self.prefix}{host}{self.postfix}.{plugin}.{metric}"


def format_number(value: float) -> str:
    """Graphite value text: integers exactly, floats to 15 significant digits."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    return format(value, ".15g")


def format_line(path: str, value: float, ts: float) -> str:
    """One plaintext-protocol line."""
    stamp = str(int(ts)) if float(ts).is_integer() else f"{ts:.3f}"
    return f"{path} {format_number(value)} {stamp}\n"


class Metric(NamedTuple):
    """One output point with the identity a JSON consumer wants."""

    path: str
    value: float
    ts: float
    domain: str | None = None
    uuid: str | None = None
    tag: str | None = None
    instance: int | None = None


# (raw key, path suffix, counter, scale, is cpu.time)
_Plan = list[tuple[str, str, bool, float, bool]]


class MetricBuilder:
    """Turns domain samples into metrics; owns the rate state, so it outlives workers.

    What a domain's stats map to is worked out once per (domain, name, set of
    keys) and reused every cycle: the per-value work is a lookup and a rate.
    """

    def __init__(self, naming: Naming, store_rates: bool = True, min_gap: float = 0.5) -> None:
        self._naming = naming
        self.store_rates = store_rates
        self.rates = RateTracker(min_gap)
        self._plans: dict[tuple[str, str, str | None, tuple[str, ...]], tuple[str, _Plan]] = {}
        self.last_seen: dict[str, float] = {}  # uuid -> when its last sample was read

    @property
    def naming(self) -> Naming:
        """How paths are built."""
        return self._naming

    @naming.setter
    def naming(self, naming: Naming) -> None:
        # Plans hold finished paths: new naming rules (a reload) apply from the next sample.
        if naming != self._naming:
            self._plans.clear()
        self._naming = naming

    def _plan(self, uuid: str, name: str, label: str | None, stats: Stats) -> tuple[str, _Plan]:
        key = (uuid, name, label, tuple(stats))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 100_000:  # domains come and go; never grow without bound
                self._plans.clear()
            # Interned: thousands of domains share one copy of each key and suffix instead
            # of keeping the strings of their first frame (most of a plan's memory).
            key = (uuid, name, label, tuple(sys.intern(k) for k in stats))
            steps = [(sys.intern(src.key), sys.intern(self.naming.value_suffix(src)),
                      src.counter, src.scale, src.key == "cpu.time")
                     for src in collectd_sources(stats)]
            plan = self._plans[key] = (self.naming.domain_prefix(name, uuid, label), steps)
        return plan

    def domain_metrics(self, instance: int, ts: float, sample: DomainSample,
                       ncpus: int) -> list[Metric]:
        """All metrics of one domain sample stamped ``ts``.

        Rates divide by the time between the samples as read (``sample.read_at``), so
        a sample collected late (after a watchdog respawn) cannot fake a spike.
        """
        uuid, name, tag, stats = sample.uuid, sample.name, sample.tag, sample.stats
        sampled = sample.read_at
        self.last_seen[uuid] = max(sampled, self.last_seen.get(uuid, sampled))
        head, steps = self._plan(uuid, name, sample.label, stats)
        out: list[Metric] = []
        rate = self.rates.rate
        for key, suffix, counter, scale, is_cpu in steps:
            value = stats[key]
            if type(value) is float and not math.isfinite(value):
                continue  # carbon cannot store nan/inf; collectd's nan is dropped there anyway
            if not isinstance(value, int | float):
                continue
            if scale != 1:
                value = value * scale
            if is_cpu:
                util = rate(uuid, "cpu_util", sampled, value)
                if util is not None and ncpus > 0:
                    out.append(Metric(head + "percent-virt_cpu_total",
                                      util * 100 / (ncpus * 1e9), ts, name, uuid, tag, instance))
            if counter and self.store_rates:
                per_second = rate(uuid, suffix, sampled, value)
                if per_second is not None:
                    out.append(Metric(head + suffix, per_second, ts, name, uuid, tag, instance))
                continue
            out.append(Metric(head + suffix, value, ts, name, uuid, tag, instance))
        out.append(Metric(head + "unresponsive", 1 if sample.unresponsive else 0, ts, name, uuid,
                          tag, instance))
        return out

    def tracked(self) -> int:
        """Domains held in the largest of this builder's per-domain tables."""
        return max(len(self.last_seen), len({key[0] for key in self._plans}),
                   self.rates.domains())

    def forget_older_than(self, ts: float) -> set[str]:
        """Drop rate state and plans of domains not sampled since ``ts``; return their uuids."""
        gone = {uuid for uuid, seen in self.last_seen.items() if seen < ts}
        for uuid in gone:
            del self.last_seen[uuid]
        self._plans = {k: v for k, v in self._plans.items() if k[0] not in gone}
        self.rates.forget_older_than(ts)
        return gone
