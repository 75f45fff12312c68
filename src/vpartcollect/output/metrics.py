"""Domain samples -> metrics: which values (collectd_values), their paths (naming),
counters as rates (rates). What reaches Graphite is what collectd 5.12's virt plugin
writes through write_graphite with the same options; each metric also carries collectd's
identity of its value (a Source per domain, a ValueType shared by every domain that has
it), for sinks that label values instead of naming paths.
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache
from typing import NamedTuple

from vpartcollect.collectd_values import UNITS, Selection, collectd_values
from vpartcollect.output.naming import PLUGIN, Naming
from vpartcollect.output.rates import RateTracker
from vpartcollect.samples import DomainSample, Stats


def format_number(value: float) -> str:
    """Graphite value text: integers exactly, floats to 15 significant digits."""
    if type(value) is int:
        return str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    return format(value, ".15g")


def format_line(path: str, value: float, ts: float) -> str:
    """One plaintext-protocol line."""
    return f"{path} {format_number(value)} {_stamp(ts)}\n"


@lru_cache(maxsize=64)
def _stamp(ts: float) -> str:
    # A batch shares a handful of timestamps: worked out once each, not once per line.
    return str(int(ts)) if float(ts).is_integer() else f"{ts:.3f}"


class Source(NamedTuple):
    """Whose value it is, as collectd names it (not escaped): one per domain."""

    host: str
    plugin: str
    plugin_instance: str


class ValueType(NamedTuple):
    """Which value of its source it is, as collectd names it, its kind and its unit."""

    type: str
    type_instance: str
    ds: str
    counter: bool  # collectd's DERIVE (written as a rate with store_rates), else a gauge
    unit: str  # of the value read (``Metric.raw``); a rate is per second of it

    @property
    def kind(self) -> str:
        """``counter`` or ``gauge``."""
        return "counter" if self.counter else "gauge"


_types: dict[ValueType, ValueType] = {}


def value_type(type_: str, type_instance: str, ds: str, counter: bool,
               unit: str = "") -> ValueType:
    """The one shared copy of this value type (thousands of domains have the same)."""
    vt = ValueType(type_, type_instance, ds, counter, unit)
    if len(_types) > 100_000:  # device names come and go; never grow without bound
        _types.clear()
    return _types.setdefault(vt, vt)


class Metric(NamedTuple):
    """One output point: its Graphite path and value, the domain it is of (what a JSON
    consumer wants), and collectd's identity of the value with the value as read (``raw``:
    a counter's total, not its rate)."""

    path: str
    value: float
    ts: float
    domain: str | None = None
    uuid: str | None = None
    tag: str | None = None
    instance: int | None = None
    source: Source | None = None
    vtype: ValueType | None = None
    raw: float | None = None


# Every field given: tuple.__new__ skips the generated __new__ (its defaults cost ~7 % of
# building a value, the supervisor's main work).
_new = tuple.__new__

# The collector's own values that only grow (the rest are gauges): one list for every
# sink that tells the two apart.
SELF_COUNTERS = frozenset({"watchdog_kills", "respawns", "missed_ticks", "duplicate_samples",
                           "graphite_dropped", "prometheus_dropped_frames"})

# (raw key, path suffix, counter, scale, is the cpu percentage, value type)
_Plan = list[tuple[str, str, bool, float, bool, ValueType]]
_UNRESPONSIVE = value_type("unresponsive", "", "value", False)


class MetricBuilder:
    """Turns domain samples into metrics; owns the rate state, so it outlives workers.

    What a domain's stats map to is worked out once per (domain, name, set of
    keys) and reused every cycle: the per-value work is a lookup and a rate.
    """

    def __init__(self, naming: Naming, store_rates: bool = True, min_gap: float = 0.5,
                 selection: Selection | None = None) -> None:
        self._naming = naming
        self._selection = selection or Selection()
        self.store_rates = store_rates
        self.rates = RateTracker(min_gap)
        self._plans: dict[tuple[str, str, str | None, tuple[str, ...]],
                          tuple[str, Source, _Plan]] = {}
        self.last_seen: dict[str, float] = {}  # uuid -> when its last sample was read (mono)

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

    @property
    def selection(self) -> Selection:
        """Which values are written."""
        return self._selection

    @selection.setter
    def selection(self, selection: Selection) -> None:
        if selection != self._selection:
            self._plans.clear()
        self._selection = selection

    def _plan(self, uuid: str, name: str, label: str | None,
              stats: Stats) -> tuple[str, Source, _Plan]:
        key = (uuid, name, label, tuple(stats))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 100_000:  # domains come and go; never grow without bound
                self._plans.clear()
            # Interned: thousands of domains share one copy of each key and suffix instead
            # of keeping the strings of their first frame (most of a plan's memory).
            key = (uuid, name, label, tuple(sys.intern(k) for k in stats))
            naming = self.naming
            plugin_instance = naming.plugin_instance(name, uuid, label)
            steps = [(sys.intern(v.key),
                      sys.intern(naming.value_suffix(PLUGIN, v.type, v.type_instance, v.ds,
                                                     v.several_ds, plugin_instance)),
                      v.counter, v.scale, v.type == "percent",
                      value_type(v.type, v.type_instance, v.ds, v.counter,
                                 UNITS.get(v.type, "")))
                     for v in collectd_values(stats, name, self.selection)]
            source = Source(naming.host(name, uuid, label), PLUGIN, plugin_instance)
            plan = self._plans[key] = (naming.domain_prefix(name, uuid, label), source, steps)
        return plan

    def domain_metrics(self, instance: int, ts: float, sample: DomainSample,
                       ncpus: int) -> list[Metric]:
        """All metrics of one domain sample stamped ``ts``.

        Rates divide by the time between the samples as read (``sample.monotonic``), so
        a sample collected late (after a watchdog respawn) cannot fake a spike, and a
        step of the wall clock gives no rate across it.
        """
        uuid, name, tag, stats = sample.uuid, sample.name, sample.tag, sample.stats
        sampled = sample.monotonic
        self.rates.clock(uuid, sample.read_at - sampled)
        self.last_seen[uuid] = max(sampled, self.last_seen.get(uuid, sampled))
        head, source, steps = self._plan(uuid, name, sample.label, stats)
        out: list[Metric] = []
        rate = self.rates.rate
        for key, suffix, counter, scale, is_percent, vtype in steps:
            value = stats[key]
            if type(value) is float and not math.isfinite(value):
                continue  # carbon cannot store nan/inf; collectd's nan is dropped there anyway
            if not isinstance(value, int | float):
                continue
            if scale != 1:
                value = value * scale
                if not math.isfinite(value):  # 1e306 KiB in bytes: not a number carbon takes
                    continue
            final: float | None = value
            if is_percent:  # cpu time as a share of every host cpu (ExtraStats cpu_util)
                util = rate(uuid, "cpu_util", sampled, value)
                final = None if util is None or ncpus <= 0 else util * 100 / (ncpus * 1e9)
                value = final or 0.0  # a share has no value read of its own
            elif counter and self.store_rates:
                final = rate(uuid, suffix, sampled, value)
            # One check on what is written: a rate or a share may overflow after its inputs
            # passed (carbon and JSON take no inf/nan).
            if final is None or (type(final) is float and not math.isfinite(final)):
                continue
            out.append(_new(Metric, (head + suffix, final, ts, name, uuid, tag, instance,
                                     source, vtype, value)))
        flag = 1 if sample.unresponsive else 0
        out.append(_new(Metric, (head + "unresponsive", flag, ts, name, uuid, tag, instance,
                                 source, _UNRESPONSIVE, flag)))
        return out

    def self_metric(self, instance: int | None, name: str, value: float,
                    ts: float, type_instance: str = "") -> Metric:
        """One of the collector's own metrics (per instance, or collector-wide; with
        ``type_instance``: a health value's datastore or call kind)."""
        naming = self.naming
        source = Source(naming.hostname, "vpartcollect",
                        "" if instance is None else f"virt-{instance}")
        return Metric(naming.self_path(instance, name, type_instance), value, ts,
                      instance=instance, source=source,
                      vtype=value_type(name, type_instance, "value", name in SELF_COUNTERS),
                      raw=value)

    def tracked(self) -> int:
        """Domains held in the largest of this builder's per-domain tables."""
        return max(len(self.last_seen), len({key[0] for key in self._plans}),
                   self.rates.domains())

    def forget_older_than(self, ts: float) -> set[str]:
        """Drop rate state and plans of domains not sampled since monotonic ``ts``; return
        their uuids."""
        gone = {uuid for uuid, seen in self.last_seen.items() if seen < ts}
        for uuid in gone:
            del self.last_seen[uuid]
        self._plans = {k: v for k, v in self._plans.items() if k[0] not in gone}
        self.rates.forget_older_than(ts)
        return gone
