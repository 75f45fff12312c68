"""Mapping, naming, escaping and rates: what lands in Graphite."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vpartcollect.collectd_values import Selection, collectd_values
from vpartcollect.output.metrics import Metric, MetricBuilder, format_line, format_number
from vpartcollect.output.naming import Naming, escape_part
from vpartcollect.wire import DomainSample, Stats

# The ExtraStats of the run that wrote the reference paths (shared/reference).
REFERENCE_EXTRA = frozenset(["cpu_util", "disk", "disk_err", "domain_state", "pcpu",
                             "vcpupin", "disk_allocation", "disk_capacity",
                             "disk_physical", "memory"])

REFERENCE = Path(__file__).parent / "data" / "collectd-virt-paths.txt"


def qemu_stats(k: int = 0) -> Stats:
    """Bulk stats shaped like libvirt 9 returns them for a 1-vCPU QEMU domain lab-7."""
    return {
        "state.state": 1, "state.reason": 1,
        "cpu.time": 10**9 * (5 + k), "cpu.user": 10**8 * (3 + k), "cpu.system": 10**8 * (1 + k),
        "balloon.current": 65536, "balloon.maximum": 65536, "balloon.rss": 40000 + k,
        "vcpu.current": 1, "vcpu.maximum": 1, "vcpu.0.state": 1, "vcpu.0.time": 10**9 * (4 + k),
        "vcpu.0.wait": 0, "net.count": 1, "net.0.name": "lt7",
        "net.0.rx.bytes": 1000 + 100 * k, "net.0.rx.pkts": 10 + k, "net.0.rx.errs": 0,
        "net.0.rx.drop": 0, "net.0.tx.bytes": 2000 + 10 * k, "net.0.tx.pkts": 20 + k,
        "net.0.tx.errs": 0, "net.0.tx.drop": 0, "block.count": 1, "block.0.name": "vda",
        "block.0.path": "/var/lib/lab/lab-7.qcow2", "block.0.rd.reqs": 100 + k,
        "block.0.rd.bytes": 4096 * (100 + k), "block.0.rd.times": 10**6 * (1 + k),
        "block.0.wr.reqs": 5 + k, "block.0.wr.bytes": 4096 * (5 + k),
        "block.0.wr.times": 10**6 * (2 + k), "block.0.fl.reqs": 3 + k,
        "block.0.fl.times": 10**6 * (3 + k), "block.0.allocation": 200704,
        "block.0.capacity": 67108864, "block.0.physical": 200704,
        "block.0.source": "/var/lib/lab/lab-7.qcow2", "net.0.mac": "52:54:00:00:00:07",
        "net.0.number": 1, "vcpu.0.pin.0": 1, "vcpu.0.pin.1": 1,
    }


def reference_builder() -> MetricBuilder:
    return MetricBuilder(Naming(), selection=Selection(REFERENCE_EXTRA))


def two_samples(builder: MetricBuilder, name: str = "lab-7") -> dict[str, float]:
    builder.domain_metrics(0, 100.0, DomainSample("uuid-7", name, None, False,
                                                  qemu_stats(0), 100.0), 2)
    got = builder.domain_metrics(0, 110.0, DomainSample("uuid-7", name, None, False,
                                                        qemu_stats(10), 110.0), 2)
    return {m.path: m.value for m in got}


def test_paths_match_what_collectd_wrote_for_a_real_domain() -> None:
    """Exactly the paths collectd 5.12 wrote for lab-7 with those ExtraStats (its memory
    stats: actual and rss from a guest with no balloon driver), plus ``unresponsive``."""
    reference = set(REFERENCE.read_text().split())
    ours = set(two_samples(reference_builder()))
    assert ours - reference == {"lab-7.virt.unresponsive"}
    assert reference <= ours, sorted(reference - ours)


def test_counters_become_rates_from_sample_times() -> None:
    values = two_samples(reference_builder())
    assert values["lab-7.virt.virt_cpu_total"] == pytest.approx(1e9)  # 10 s of cpu in 10 s
    assert values["lab-7.virt.percent-virt_cpu_total"] == pytest.approx(50.0)  # of 2 host cpus
    assert values["lab-7.virt.if_octets-lt7.rx"] == pytest.approx(100.0)
    assert values["lab-7.virt.disk_ops-vda.write"] == pytest.approx(1.0)
    assert values["lab-7.virt.total_time_in_ms-flush-vda"] == pytest.approx(1.0)  # 10 ms / 10 s
    assert values["lab-7.virt.memory-actual_balloon"] == 65536 * 1024  # KiB -> bytes
    assert values["lab-7.virt.memory-total"] == 65536 * 1024
    assert values["lab-7.virt.disk_capacity-vda"] == 67108864
    assert values["lab-7.virt.domain_state.state"] == 1


def test_first_sample_sends_no_counter_and_no_nan() -> None:
    got = reference_builder().domain_metrics(
        0, 100.0, DomainSample("u", "lab-7", None, False, qemu_stats(), 100.0), 2)
    paths = {m.path for m in got}
    assert "lab-7.virt.memory-rss" in paths
    assert "lab-7.virt.virt_cpu_total" not in paths
    assert all(m.value == m.value for m in got)


def test_raw_counters_when_rates_are_off() -> None:
    values = two_samples(MetricBuilder(Naming(), store_rates=False))
    assert set(values) == {f"lab-7.virt.{p}" for p in (  # collectd's defaults, and ours
        "virt_cpu_total", "memory-total", "disk_ops-vda.read", "disk_ops-vda.write",
        "disk_octets-vda.read", "disk_octets-vda.write", "if_octets-lt7.rx",
        "if_octets-lt7.tx", "if_packets-lt7.rx", "if_packets-lt7.tx", "if_errors-lt7.rx",
        "if_errors-lt7.tx", "if_dropped-lt7.rx", "if_dropped-lt7.tx", "unresponsive")}
    assert values["lab-7.virt.if_octets-lt7.rx"] == 2000


@pytest.mark.parametrize(("name", "escaped"), [
    ("lab-7", "lab-7"),
    ("web.example.com", "web_example_com"),
    ("a b\tc", "a_b_c"),
    ("evil\nfake.path 1 1", "evil_fake_path_1_1"),
    ("x\r\x00y", "x__y"),
    ('q"u\\o:t!e,s/(p)', "q_u_o_t_e_s__p_"),
    ("caf\u00e9-\u2603", "caf_-_"),
])
def test_escape_part(name: str, escaped: str) -> None:
    assert escape_part(name) == escaped


def test_hostile_domain_name_cannot_add_a_line_or_a_level() -> None:
    values = two_samples(MetricBuilder(Naming()), name="x 1 2\nforged.path 666 1")
    for path in values:
        line = format_line(path, 1.0, 100.0)
        assert line.count("\n") == 1 and len(line.split()) == 3
        assert path.split(".")[0] == "x_1_2_forged_path_666_1"


def test_naming_options() -> None:
    naming = Naming(prefix="collectd.", postfix=".kvm", escape="-", hostname="hv.01",
                    hostname_format=("hostname", "name"), plugin_instance_format=("uuid",))
    assert naming.domain_prefix("vm.1", "u-1") == "collectd.hv-01-vm-1.kvm.virt-u-1."
    assert naming.self_path(3, "domains") == "collectd.hv-01.kvm.vpartcollect-virt-3.domains"
    meta = Naming(hostname_format=("metadata",))
    assert meta.domain_prefix("vm1", "u", "web.1") == "web_1.virt."
    assert meta.domain_prefix("vm1", "u", None) == "vm1.virt."  # no such metadata: the name


def test_values_ignore_missing_and_non_numeric() -> None:
    assert collectd_values({"cpu.time": "oops", "block.count": 1, "block.0.name": "vda"},
                           "d", Selection()) == []


@pytest.mark.parametrize(("value", "text"), [(5, "5"), (5.0, "5"), (0.1, "0.1"),
                                             (1e20, "1e+20"), (2.5e-7, "2.5e-07"),
                                             (True, "1"), (2**64 + 1, "18446744073709551617"),
                                             (-3, "-3"), (2.0**60, "1.15292150460685e+18")])
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


def test_format_line_timestamps() -> None:
    assert format_line("a.b", 1, 1700000000.0) == "a.b 1 1700000000\n"
    assert format_line("a.b", 1, 1700000000.5) == "a.b 1 1700000000.500\n"
    # A stamp worked out once is not handed to another: 1700000000 and its float agree.
    assert format_line("a.b", 2, 1700000000) == "a.b 2 1700000000\n"
    assert format_line("a.b", 2, 1700000000.25) == "a.b 2 1700000000.250\n"


def test_domains_that_went_away_leave_nothing_behind() -> None:
    """10,000 short-lived domains: rate state, plans and last-seen all come back down."""
    builder = MetricBuilder(Naming())
    stats: Stats = {"cpu.time": 1, "balloon.current": 1024, "block.count": 1,
                    "block.0.name": "vda", "block.0.rd.bytes": 5}
    for i in range(10_000):
        sample = DomainSample(f"u{i}", f"vm{i}", None, False, stats, 100.0 + i * 0.001)
        builder.domain_metrics(0, 100.0, sample, 2)
    keep = DomainSample("keep", "keep", None, False, stats, 200.0)
    builder.domain_metrics(0, 200.0, keep, 2)
    assert len(builder._plans) == 10_001 and len(builder.last_seen) == 10_001
    gone = builder.forget_older_than(150.0)
    assert len(gone) == 10_000 and "keep" not in gone
    assert len(builder._plans) == 1 and set(builder.last_seen) == {"keep"}
    assert list(builder.rates._last) == ["keep"]


def test_rates_divide_by_monotonic_read_times_and_skip_a_wall_clock_step() -> None:
    builder = reference_builder()

    def cpu(ts: float, wall: float, mono: float, k: int) -> float | None:
        sample = DomainSample("uuid-7", "lab-7", None, False, qemu_stats(k), wall, None, mono)
        got = {m.path: m.value for m in builder.domain_metrics(0, ts, sample, 2)}
        return got.get("lab-7.virt.virt_cpu_total")

    assert cpu(100.0, 100.0, 5.0, 0) is None
    assert cpu(110.0, 110.0, 15.0, 10) == 1e9  # 10 s of cpu over 10 s
    assert cpu(3720.0, 3725.0, 20.0, 15) is None  # the wall clock stepped +1 h meanwhile
    assert cpu(3730.0, 3735.0, 30.0, 25) == 1e9  # over 10 monotonic seconds
    assert builder.forget_older_than(25.0) == set()  # last seen at monotonic 30
    assert builder.forget_older_than(31.0) == {"uuid-7"}


def test_no_value_that_is_not_finite_is_written() -> None:
    """balloon.current is KiB, written in bytes: 1e306 KiB overflows to inf, which carbon
    and JSON cannot take. A rate that overflows is left out the same way."""
    builder = MetricBuilder(Naming(), selection=Selection(frozenset({"memory"})))
    first: Stats = {"state.state": 1, "balloon.current": 1e306, "cpu.time": -1.7e308,
                    "balloon.rss": 5}
    second: Stats = {**first, "cpu.time": 1.7e308}
    builder.domain_metrics(0, 100.0, DomainSample("u", "vm", None, False, first, 100.0), 2)
    got = builder.domain_metrics(0, 101.0, DomainSample("u", "vm", None, False, second,
                                                        100.6), 2)
    values = {m.path: m.value for m in got}
    assert values == {"vm.virt.memory-rss": 5120, "vm.virt.unresponsive": 0}, values


def test_a_cpu_share_that_overflows_is_left_out() -> None:
    """cpu_util is the cpu rate * 100 / (ncpus * 1e9): a finite rate (2e307 ns/s) used
    to overflow there and reach JSON as Infinity."""
    builder = MetricBuilder(Naming(), selection=Selection(frozenset({"cpu_util"})))
    first: Stats = {"state.state": 1, "cpu.time": 0.0}
    builder.domain_metrics(0, 100.0, DomainSample("u", "vm", None, False, first, 100.0), 1)
    got = builder.domain_metrics(0, 101.0, DomainSample("u", "vm", None, False,
                                                        {**first, "cpu.time": 1e307}, 100.5), 1)
    values = {m.path: m.value for m in got}
    assert all(math.isfinite(v) for v in values.values()), values
    assert not any("percent" in p for p in values), values


def second_sample(builder: MetricBuilder, uuid: str = "uuid-7",
                  name: str = "lab-7") -> list[Metric]:
    builder.domain_metrics(0, 100.0, DomainSample(uuid, name, None, False, qemu_stats(0),
                                                  100.0), 2)
    return builder.domain_metrics(0, 110.0, DomainSample(uuid, name, None, False,
                                                         qemu_stats(10), 110.0), 2)


def test_each_metric_carries_collectds_identity_of_its_value() -> None:
    """The oracle is the path collectd wrote (the reference run's naming): host, plugin,
    ``type[-type_instance]`` and the data source name read back from it agree with what
    the metric carries; the raw value is the counter as read, the value its rate."""
    got = {m.path: m for m in second_sample(reference_builder())}
    for path, m in got.items():
        assert m.source is not None and m.vtype is not None, path
        host, plugin, name, *ds = path.split(".")
        assert (m.source.host, m.source.plugin, m.source.plugin_instance) == (host, plugin, "")
        assert name == "-".join(p for p in (m.vtype.type, m.vtype.type_instance) if p)
        assert ds in ([m.vtype.ds], []) and (ds or m.vtype.ds in ("value", "state")), path
    rx = got["lab-7.virt.if_octets-lt7.rx"]
    assert rx.vtype is not None and (rx.vtype.kind, rx.vtype.unit) == ("counter", "bytes")
    assert rx.raw == 2000 and rx.value == pytest.approx(100.0)
    flush = got["lab-7.virt.total_time_in_ms-flush-vda"]
    assert flush.vtype is not None and flush.vtype.unit == "ms" and flush.raw == 13.0
    memory = got["lab-7.virt.memory-total"]
    assert memory.vtype is not None and (memory.vtype.kind, memory.vtype.unit) == (
        "gauge", "bytes") and memory.raw == memory.value == 65536 * 1024
    share = got["lab-7.virt.percent-virt_cpu_total"]
    assert share.vtype is not None and share.vtype.kind == "gauge" and share.raw == share.value


def test_identity_follows_the_naming_options_and_value_types_are_shared() -> None:
    naming = Naming(hostname_format=("uuid",), plugin_instance_format=("name",),
                    separate_instances=True)
    builder = MetricBuilder(naming)
    one = {m.path: m for m in second_sample(builder, "uuid-1", "web.example.com")}
    two = {m.path: m for m in second_sample(builder, "uuid-2", "db")}
    rd = one["uuid-1.virt.web_example_com.disk_octets.vda.read"]
    assert rd.source == ("uuid-1", "virt", "web.example.com")  # not escaped
    assert rd.vtype is two["uuid-2.virt.db.disk_octets.vda.read"].vtype  # one shared copy
    own = builder.self_metric(2, "domains", 5, 120.0)
    assert (own.path, own.source, own.vtype and own.vtype.type) == (
        "localhost.vpartcollect.virt-2.domains", ("localhost", "vpartcollect", "virt-2"),
        "domains")


def test_the_collectors_own_counters_say_they_are_counters() -> None:
    """A sink that tells counters from gauges (Prometheus) must not take a count that
    only grows (respawns, lines dropped) for a gauge, nor a duration for a counter."""
    builder = MetricBuilder(Naming())
    kinds = {name: builder.self_metric(0, name, 1.0, 100.0).vtype
             for name in ("respawns", "watchdog_kills", "graphite_dropped", "cycle_seconds",
                          "domains")}
    assert {name: vt.counter for name, vt in kinds.items() if vt is not None} == {
        "respawns": True, "watchdog_kills": True, "graphite_dropped": True,
        "cycle_seconds": False, "domains": False}
