"""The Prometheus mapping (pure): a domain's raw sample -> the families, names, labels and
units of Debian's prometheus-libvirt-exporter 0.2.0 and inovex's additions; and the
board's rules (the last complete sample; a domain gone after the tick that missed it)."""

from __future__ import annotations

from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from promlab import Series, parse

from vpartcollect.kernel_counters import vcpu_stats
from vpartcollect.output.prometheus.board import Board
from vpartcollect.output.prometheus.families import Entry, exposition
from vpartcollect.output.prometheus.server import Exporter, ExporterSettings
from vpartcollect.samples import DomainSample, Stats

HEALTHY: Stats = {
    "state.state": 1, "state.reason": 1, "cpu.time": 2_500_000_000, "cpu.user": 1_000_000_000,
    "cpu.system": 500_000_000, "balloon.current": 1048576, "balloon.maximum": 2097152,
    "balloon.rss": 524288, "balloon.major_fault": 7, "vcpu.current": 2, "vcpu.maximum": 2,
    "vcpu.0.time": 1_000_000_000, "vcpu.0.wait": 3_000_000, "vcpu.0.delay": 4_000_000,
    "vcpu.1.time": 2_000_000_000, "vcpu.1.wait": 0, "vcpu.1.delay": 0,
    "net.count": 1, "net.0.name": "vnet0", "net.0.rx.bytes": 100, "net.0.rx.pkts": 2,
    "net.0.rx.errs": 0, "net.0.rx.drop": 0, "net.0.tx.bytes": 300, "net.0.tx.pkts": 4,
    "net.0.tx.errs": 0, "net.0.tx.drop": 1,
    "block.count": 1, "block.0.name": "vda", "block.0.path": "/img/a.qcow2",
    "block.0.rd.reqs": 10, "block.0.rd.bytes": 4096, "block.0.rd.times": 1_500_000_000,
    "block.0.wr.reqs": 5, "block.0.wr.bytes": 2048, "block.0.wr.times": 500_000_000,
    "block.0.fl.reqs": 1, "block.0.fl.times": 1000, "block.0.capacity": 1 << 30,
}
HUNG: Stats = {"state.state": 1, "cpu.time": 9_000_000_000, "vcpu.current": 1,
               "vcpu.0.time": 8_000_000_000, "net.count": 1, "net.0.name": "vnet1",
               "net.0.rx.bytes": 5}


def sample(name: str, stats: Stats, unresponsive: bool = False) -> DomainSample:
    return DomainSample(f"uuid-{name}", name, None, unresponsive, stats, 100.0)


def scrape(entries: list[Entry], timestamps: bool = False) -> Series:
    """name -> {sorted label items -> value}, as a scraper parses our text format."""
    class Registry:
        def collect(self):  # type: ignore[no-untyped-def]
            return exposition(entries, {"virt-0": ({"blocked_calls": 1.0, "respawns": 2.0},
                                                   100.0)}, ({"tracked_domains": 2.0}, 100.0),
                              10.0, timestamps, True)
    from prometheus_client.exposition import generate_latest
    return parse(generate_latest(Registry()).decode())  # type: ignore[arg-type, unused-ignore]


def test_debian_exporter_names_labels_and_base_units() -> None:
    got = scrape([Entry(sample("a", HEALTHY), 100.0)])
    dom = (("domain", "a"), ("uuid", "uuid-a"))
    assert got["libvirt_domain_info_cpu_time_seconds_total"][dom] == 2.5  # ns -> s
    assert got["libvirt_domain_info_memory_usage_bytes"][dom] == 1 << 30  # KiB -> bytes
    assert got["libvirt_domain_info_maximum_memory_bytes"][dom] == 2 << 30
    assert got["libvirt_domain_info_virtual_cpus"][dom] == 2
    assert got["libvirt_domain_state_code"][dom] == 1
    disk = (("domain", "a"), ("source_file", "/img/a.qcow2"), ("target_device", "vda"),
            ("uuid", "uuid-a"))
    assert got["libvirt_domain_block_stats_read_bytes_total"][disk] == 4096
    assert got["libvirt_domain_block_stats_write_requests_total"][disk] == 5
    assert got["libvirt_domain_block_stats_read_time_seconds_total"][disk] == 1.5
    nic = (("domain", "a"), ("source_bridge", ""), ("target_device", "vnet0"),
           ("uuid", "uuid-a"))
    assert got["libvirt_domain_interface_stats_transmit_bytes_total"][nic] == 300
    assert got["libvirt_domain_interface_stats_transmit_drops_total"][nic] == 1
    vcpu0 = (("domain", "a"), ("uuid", "uuid-a"), ("vcpu", "0"))
    assert got["libvirt_domain_vcpu_wait_seconds_total"][vcpu0] == 0.003
    assert got["libvirt_domain_vcpu_delay_seconds_total"][vcpu0] == 0.004
    assert got["libvirt_domain_memory_stats_rss_bytes"][dom] == 512 << 20
    assert got["libvirt_domain_memory_stats_major_fault_total"][dom] == 7
    assert got["libvirt_domain_timed_out"][dom] == 0
    assert got["libvirt_domains_number"][()] == 1
    assert got["libvirt_up"][()] == 1
    assert got["vpartcollect_instance_blocked_calls"][(("partition", "virt-0"),)] == 1
    assert got["vpartcollect_instance_respawns_total"][(("partition", "virt-0"),)] == 2
    assert got["vpartcollect_tracked_domains"][()] == 2


def test_a_hung_domain_keeps_what_the_kernel_gave_and_says_timed_out() -> None:
    got = scrape([Entry(sample("a", HEALTHY), 100.0), Entry(sample("h", HUNG, True), 100.0)])
    hung = (("domain", "h"), ("uuid", "uuid-h"))
    assert got["libvirt_domain_timed_out"][hung] == 1
    assert got["libvirt_domain_info_cpu_time_seconds_total"][hung] == 9.0
    assert not any(("domain", "h") in k for k in
                   got["libvirt_domain_block_stats_read_bytes_total"])
    assert got["libvirt_domains_number"][()] == 2


def test_help_says_the_interval_and_timestamps_are_the_tick_when_asked() -> None:
    class Registry:
        def collect(self):  # type: ignore[no-untyped-def]
            return exposition([Entry(sample("a", HEALTHY), 1234.5)], {}, None, 10.0, True,
                              True)
    text = openmetrics(Registry()).decode()  # type: ignore[no-untyped-call]
    assert "Sampled every 10 s." in text
    assert 'libvirt_domain_state_code{domain="a",uuid="uuid-a"} 1.0 1234.5' in text
    assert text.endswith("# EOF\n")


def test_sparse_vcpu_numbers_of_the_kernel_reader_are_all_exposed() -> None:
    """Review of issue 26: vCPUs were looked up below vcpu.maximum or vcpu.current; the
    kernel reader gives vcpu.current only, so vCPUs 0, 2, 3 (1 unplugged) lost vCPU 3."""
    stat = "1 (qemu) S " + " ".join(["0"] * 10) + " 100 50 " + " ".join(["0"] * 30)
    sched = "se.statistics.wait_sum : 12.5\n"
    stats = {"state.state": 1, **vcpu_stats({n: (stat, sched, "1 2000000 3")
                                             for n in (0, 2, 3)}, 100)}
    got = scrape([Entry(sample("a", stats), 100.0)])
    assert stats["vcpu.current"] == 3
    for family in ("time_seconds_total", "wait_seconds_total", "delay_seconds_total",
                   "state"):
        assert {dict(k)["vcpu"] for k in got[f"libvirt_domain_vcpu_{family}"]} == \
            {"0", "2", "3"}, family
    assert got["libvirt_domain_vcpu_time_seconds_total"][
        (("domain", "a"), ("uuid", "uuid-a"), ("vcpu", "3"))] == 1.5


def test_the_host_health_each_worker_saw_is_exposed_by_partition() -> None:
    """Review of issues 26/27: the health values went to Graphite and stdout only."""
    exporter = Exporter(ExporterSettings(10.0, False, 1, 30.0))
    health = [("datastore_answering", "/srv/nfs", 0), ("datastore_silent_seconds",
                                                       "/srv/nfs", 12.5),
              ("frozen_qemus", "all", 2), ("libvirtd_seconds", "stats_p50", 0.004)]
    exporter.frame(["done", 0, 100.0, {"domains": 0}, [list(h) for h in health]])
    got = parse(exporter.render(None)[0].decode())
    for typ, of, value in health:
        assert got[f"vpartcollect_instance_{typ}"][(("of", of), ("partition", "virt-0"))] \
            == value, typ


def test_board_keeps_the_last_sample_and_drops_a_domain_its_instance_missed() -> None:
    board = Board()
    board.sample(0, 10.0, sample("a", HEALTHY))
    board.sample(0, 10.0, sample("b", HEALTHY))
    board.sample(1, 10.0, sample("c", HEALTHY))
    board.done(0, 10.0, {}, 1.0)
    board.sample(0, 20.0, sample("a", HUNG, True))  # hung now: no block values stay
    board.sample(0, 10.0, sample("a", HEALTHY))  # a late replay of an older tick
    board.done(0, 20.0, {}, 2.0)  # b was not sampled at 20: gone
    names = {e.sample.name: e for e in board.snapshot()}
    assert set(names) == {"a", "c"}  # c belongs to virt-1, which has not finished 20
    assert names["a"].tick == 20.0 and names["a"].sample.unresponsive
    assert "block.count" not in names["a"].sample.stats
    assert board.up(2.5, 2, 5.0) is False  # virt-1 never finished a tick
    board.done(1, 20.0, {}, 2.5)
    assert [e.sample.name for e in board.snapshot()] == ["a"]
    assert board.up(3.0, 2, 5.0) is True and board.up(9.0, 2, 5.0) is False


def test_the_exporter_renders_the_text_format_unless_openmetrics_is_asked() -> None:
    exporter = Exporter(ExporterSettings(10.0, False, 1, 30.0))
    body, kind = exporter.render(None)
    assert kind.startswith("text/plain; version=0.0.4") and b"libvirt_up 0.0" in body
    body, kind = exporter.render("application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
