"""A domain's raw sample -> Prometheus metric families (pure: no I/O, no clock).

Names, labels and units are those of Debian's prometheus-libvirt-exporter 0.2.0
(kumina's libvirt_exporter), plus inovex's additions (vCPU, memory and block
timing statistics, ``libvirt_domain_timed_out``) and the collector's own
``vpartcollect_*``. Counters are raw and in base units (seconds, bytes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vpartcollect.health import HealthValue
from vpartcollect.output.metrics import SELF_COUNTERS
from vpartcollect.samples import DomainSample, Stats

NS = 1e-9  # libvirt's times are nanoseconds
KIB = 1024  # and its memory sizes KiB

DOMAIN = ["domain", "uuid"]
BLOCK = ["domain", "source_file", "target_device", "uuid"]
NIC = ["domain", "source_bridge", "target_device", "uuid"]
VCPU = ["domain", "uuid", "vcpu"]

# name, help, stats key suffix, scale, counter?  (labels: DOMAIN)
_INFO = (
    ("libvirt_domain_info_cpu_time_seconds_total", "Amount of CPU time used by the domain, "
     "in seconds.", "cpu.time", NS, True),
    ("libvirt_domain_info_cpu_user_seconds_total", "User CPU time of the domain, in seconds.",
     "cpu.user", NS, True),
    ("libvirt_domain_info_cpu_system_seconds_total", "System CPU time of the domain, "
     "in seconds.", "cpu.system", NS, True),
    ("libvirt_domain_info_maximum_memory_bytes", "Maximum allowed memory of the domain, "
     "in bytes.", "balloon.maximum", KIB, False),
    ("libvirt_domain_info_memory_usage_bytes", "Memory usage of the domain, in bytes.",
     "balloon.current", KIB, False),
    ("libvirt_domain_info_virtual_cpus", "Number of virtual CPUs for the domain.",
     "vcpu.current", 1, False),
    ("libvirt_domain_info_maximum_virtual_cpus", "Maximum number of virtual CPUs for the "
     "domain.", "vcpu.maximum", 1, False),
    ("libvirt_domain_state_code", "State of the domain.", "state.state", 1, False),
    ("libvirt_domain_state_reason_code", "Reason of the domain's state.", "state.reason", 1,
     False),
)
# balloon.<key> as the guest reports it (inovex's libvirt_domain_memory_stats_*).
_MEMORY = (
    ("actual_balloon_bytes", "actual", KIB, False, "Current balloon size, in bytes."),
    ("rss_bytes", "rss", KIB, False, "Resident set size of the QEMU process, in bytes."),
    ("unused_bytes", "unused", KIB, False, "Memory left unused by the guest, in bytes."),
    ("available_bytes", "available", KIB, False, "Memory the guest sees, in bytes."),
    ("usable_bytes", "usable", KIB, False, "Memory the guest can reclaim without swapping, "
     "in bytes."),
    ("disk_cache_bytes", "disk_caches", KIB, False, "Guest memory used for disk caches, "
     "in bytes."),
    ("swap_in_bytes_total", "swap_in", KIB, True, "Memory swapped in by the guest, in bytes."),
    ("swap_out_bytes_total", "swap_out", KIB, True, "Memory swapped out by the guest, "
     "in bytes."),
    ("major_fault_total", "major_fault", 1, True, "Page faults that needed disk I/O."),
    ("minor_fault_total", "minor_fault", 1, True, "Page faults served from memory."),
)
_BLOCK = (
    ("read_bytes_total", "rd.bytes", 1, True, "Number of bytes read from a block device, "
     "in bytes."),
    ("read_requests_total", "rd.reqs", 1, True, "Number of read requests from a block "
     "device."),
    ("write_bytes_total", "wr.bytes", 1, True, "Number of bytes written from a block device, "
     "in bytes."),
    ("write_requests_total", "wr.reqs", 1, True, "Number of write requests from a block "
     "device."),
    ("read_time_seconds_total", "rd.times", NS, True, "Time spent reading from a block "
     "device, in seconds."),
    ("write_time_seconds_total", "wr.times", NS, True, "Time spent writing to a block "
     "device, in seconds."),
    ("flush_requests_total", "fl.reqs", 1, True, "Number of flush requests to a block "
     "device."),
    ("flush_time_seconds_total", "fl.times", NS, True, "Time spent flushing a block device, "
     "in seconds."),
    ("allocation_bytes", "allocation", 1, False, "Highest written offset of a block device, "
     "in bytes."),
    ("capacity_bytes", "capacity", 1, False, "Guest-visible size of a block device, "
     "in bytes."),
    ("physical_bytes", "physical", 1, False, "Host-side size of a block device's image, "
     "in bytes."),
)
_NET = (
    ("receive_bytes_total", "rx.bytes", "Number of bytes received on a network interface, "
     "in bytes."),
    ("receive_packets_total", "rx.pkts", "Number of packets received on a network "
     "interface."),
    ("receive_errors_total", "rx.errs", "Number of packet receive errors on a network "
     "interface."),
    ("receive_drops_total", "rx.drop", "Number of packet receive drops on a network "
     "interface."),
    ("transmit_bytes_total", "tx.bytes", "Number of bytes transmitted on a network "
     "interface, in bytes."),
    ("transmit_packets_total", "tx.pkts", "Number of packets transmitted on a network "
     "interface."),
    ("transmit_errors_total", "tx.errs", "Number of packet transmit errors on a network "
     "interface."),
    ("transmit_drops_total", "tx.drop", "Number of packet transmit drops on a network "
     "interface."),
)
_VCPU = (
    ("time_seconds_total", "time", NS, True, "Time the vCPU ran, in seconds."),
    ("wait_seconds_total", "wait", NS, True, "Time the vCPU's thread waited on the host "
     "scheduler's run queue (its sched wait_sum), in seconds."),
    ("delay_seconds_total", "delay", NS, True, "Time the vCPU was runnable but waited for a "
     "host CPU (steal), in seconds."),
    ("state", "state", 1, False, "State of the vCPU (libvirt's code)."),
)
# The vCPUs a sample has, by the keys it carries: numbers may be sparse (vCPUs unplugged;
# the kernel reader gives vcpu.current only), so not range(vcpu.maximum or current).
_VCPU_KEY = re.compile(r"vcpu\.(\d{1,9})\.(?:time|wait|delay|state)$")


@dataclass(frozen=True)
class Entry:
    """A domain's last complete sample and the tick it belongs to."""

    sample: DomainSample
    tick: float


class Families:
    """Metric families being filled, one per name, in a fixed order."""

    def __init__(self, interval: float, timestamps: bool) -> None:
        self.suffix = f" Sampled every {interval:g} s."
        self.timestamps = timestamps
        self.by_name: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

    def add(self, name: str, doc: str, counter: bool, labels: list[str],
            values: list[str], value: float, tick: float) -> None:
        """One sample of the family ``name`` (made on first use)."""
        fam = self.by_name.get(name)
        if fam is None:
            fam = (CounterMetricFamily if counter else GaugeMetricFamily)(
                name, doc + self.suffix, labels=labels)
            self.by_name[name] = fam
        fam.add_metric(values, value, timestamp=tick if self.timestamps else None)

    def done(self) -> list[Metric]:
        """The families, in the order their names sort (as the Go client writes them)."""
        return [self.by_name[n] for n in sorted(self.by_name)]


def _number(stats: Stats, key: str) -> float | None:
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(stats: Stats, key: str) -> str:
    value = stats.get(key)
    return value if isinstance(value, str) else ""


def _count(stats: Stats, prefix: str) -> int:
    n = _number(stats, f"{prefix}.count")
    return int(n) if n is not None and 0 <= n <= 4096 else 0


def domain_samples(out: Families, entry: Entry) -> None:
    """Every series of one domain's sample into ``out``."""
    d, tick, stats = entry.sample, entry.tick, entry.sample.stats
    ids = [d.name, d.uuid]
    out.add("libvirt_domain_timed_out", "1 when the domain's last sample was cut short "
            "(QEMU or its storage not answering): only what the kernel and libvirtd gave "
            "without QEMU is shown.", False, DOMAIN, ids, 1.0 if d.unresponsive else 0.0, tick)
    for name, doc, key, scale, counter in _INFO:
        if (v := _number(stats, key)) is not None:
            out.add(name, doc, counter, DOMAIN, ids, v * scale, tick)
    for suffix, key, scale, counter, doc in _MEMORY:
        if (v := _number(stats, f"balloon.{key}")) is not None:
            out.add(f"libvirt_domain_memory_stats_{suffix}", doc, counter, DOMAIN, ids,
                    v * scale, tick)
    for i in range(_count(stats, "block")):
        labels = [d.name, _text(stats, f"block.{i}.path"), _text(stats, f"block.{i}.name"),
                  d.uuid]
        for suffix, key, scale, counter, doc in _BLOCK:
            if (v := _number(stats, f"block.{i}.{key}")) is not None:
                out.add(f"libvirt_domain_block_stats_{suffix}", doc, counter, BLOCK, labels,
                        v * scale, tick)
    for i in range(_count(stats, "net")):
        labels = [d.name, _text(stats, f"net.{i}.bridge"), _text(stats, f"net.{i}.name"),
                  d.uuid]
        for suffix, key, doc in _NET:
            if (v := _number(stats, f"net.{i}.{key}")) is not None:
                out.add(f"libvirt_domain_interface_stats_{suffix}", doc, True, NIC, labels,
                        v, tick)
    for n in sorted({int(m[1]) for k in stats if (m := _VCPU_KEY.match(k))}):
        for suffix, key, scale, counter, doc in _VCPU:
            if (v := _number(stats, f"vcpu.{n}.{key}")) is not None:
                out.add(f"libvirt_domain_vcpu_{suffix}", doc, counter, VCPU,
                        [d.name, d.uuid, str(n)], v * scale, tick)


SELF_HELP = {
    "cycle_seconds": "Seconds the instance's last tick took.",
    "domains": "Domains the instance sampled in its last tick.",
    "watchdog_kills": "Workers killed for staying silent past their deadline.",
    "respawns": "Workers started again.",
    "unresponsive_domains": "Domains whose last sample was cut short.",
    "missed_ticks": "Ticks skipped while the worker was behind.",
    "blocked_calls": "libvirt calls abandoned at their deadline that libvirtd still runs.",
    "duplicate_samples": "Second samples of a domain for one tick, dropped.",
    "tracked_domains": "Per-domain entries the supervisor holds.",
    "prometheus_dropped_frames": "Frames of samples the exporter process could not take "
    "in time, dropped.",
}


def self_samples(out: Families, instance: str | None, values: dict[str, float],
                 tick: float) -> None:
    """The collector's own metrics of one instance (or the whole collector: None)."""
    for key in sorted(values):
        counter = key in SELF_COUNTERS
        name = f"vpartcollect_{key}"
        doc = SELF_HELP.get(key, f"The collector's {key.replace('_', ' ')}.")
        if instance is None:
            out.add(name, doc, counter, [], [], values[key], tick)
        else:
            out.add(f"vpartcollect_instance_{key}", doc, counter, ["partition"], [instance],
                    values[key], tick)


HEALTH_HELP = {
    "datastore_answering": "1 when the datastore ('of': its mount or pool) answered the "
    "worker's probe.",
    "datastore_silent_seconds": "Seconds the datastore ('of') has not answered.",
    "frozen_qemus": "QEMUs found frozen, by why ('of'; all: every one).",
    "libvirtd_seconds": "Seconds libvirtd took per call of a kind ('of': kind_p50, "
    "kind_max).",
}


def health_samples(out: Families, instance: str, values: list[HealthValue],
                   tick: float) -> None:
    """The host's health as one instance's worker saw it (health.py): a gauge per type,
    labelled with the partition and what it is of (store, why, call kind)."""
    for typ, of, value in sorted(values):
        out.add(f"vpartcollect_instance_{typ}", HEALTH_HELP.get(typ, f"Host health: {typ}."),
                False, ["partition", "of"], [instance, of], value, tick)


def exposition(entries: Iterable[Entry], instances: dict[str, tuple[dict[str, float], float]],
               collector: tuple[dict[str, float], float] | None, interval: float,
               timestamps: bool, libvirt_up: bool,
               health: dict[str, tuple[list[HealthValue], float]] | None = None
               ) -> Iterator[Metric]:
    """Every family of one scrape: the domains' last samples and the collector's own."""
    out = Families(interval, timestamps)
    count = 0
    for entry in entries:
        domain_samples(out, entry)
        count += 1
    for instance, (values, tick) in sorted(instances.items()):
        self_samples(out, instance, values, tick)
    for instance, (rows, tick) in sorted((health or {}).items()):
        health_samples(out, instance, rows, tick)
    if collector is not None:
        self_samples(out, None, collector[0], collector[1])
    fams = out.done()
    number = GaugeMetricFamily("libvirt_domains_number", "Number of domains." + out.suffix,
                               value=count)
    up = GaugeMetricFamily("libvirt_up", "Whether every worker finished a recent tick "
                           "(one hung domain does not make it 0)." + out.suffix,
                           value=1.0 if libvirt_up else 0.0)
    yield from fams
    yield number
    yield up
