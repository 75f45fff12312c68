"""Which values collectd's virt plugin submits, for each of its options (virt.c of 5.12 is
the oracle)."""

from __future__ import annotations

from vpartcollect.collectd_values import IgnoreList, Selection, collectd_values, needed_groups
from vpartcollect.samples import Stats

STATS: Stats = {
    "state.state": 1, "state.reason": 1, "cpu.time": 5, "cpu.user": 3, "cpu.system": 1,
    "balloon.current": 65536, "balloon.rss": 40000, "balloon.last-update": 7,
    "balloon.hugetlb_pgalloc": 0, "vcpu.current": 1, "vcpu.0.time": 4,
    "block.count": 2, "block.0.name": "vda", "block.0.path": "/nfs/img/lab-7.qcow2",
    "block.0.source": "/nfs/img/lab-7.qcow2", "block.0.rd.reqs": 1, "block.0.wr.reqs": 2,
    "block.0.rd.bytes": 3, "block.0.wr.bytes": 4, "block.0.capacity": 9,
    "block.1.name": "hdc", "block.1.rd.reqs": 0, "block.1.wr.reqs": 0,
    "block.1.rd.bytes": 0, "block.1.wr.bytes": 0, "block.1.capacity": 0,
    "net.count": 2, "net.0.name": "lt7", "net.0.mac": "52:54:00:aa:bb:01", "net.0.number": 1,
    "net.1.name": "lt8", "net.1.mac": "52:54:00:aa:bb:02", "net.1.number": 2,
    **{f"net.{i}.{d}.{k}": 0 for i in (0, 1) for d in ("rx", "tx")
       for k in ("bytes", "pkts", "errs", "drop")},
}


def names(stats: Stats, selection: Selection, domain: str = "lab-7") -> set[str]:
    out = set()
    for v in collectd_values(stats, domain, selection):
        inst = f"-{v.type_instance}" if v.type_instance else ""
        out.add(f"{v.type}{inst}" + (f".{v.ds}" if v.several_ds else ""))
    return out


def test_the_default_is_collectds() -> None:
    assert names(STATS, Selection()) == {
        "virt_cpu_total", "memory-total",
        *(f"{t}-{d}.{ds}" for t in ("disk_ops", "disk_octets") for d in ("vda", "hdc")
          for ds in ("read", "write")),
        *(f"{t}-{n}.{ds}" for t in ("if_octets", "if_packets", "if_errors", "if_dropped")
          for n in ("lt7", "lt8") for ds in ("rx", "tx"))}


def test_extra_stats_add_their_values_only() -> None:
    got = names(STATS, Selection(frozenset({"vcpu", "memory", "disk_capacity",
                                            "domain_state", "pcpu"})))
    added = got - names(STATS, Selection())
    assert added == {"virt_vcpu-0", "memory-actual_balloon", "memory-rss",
                     "disk_capacity-vda", "domain_state.state", "domain_state.reason",
                     "ps_cputime.user", "ps_cputime.syst"}  # hdc has no source: no capacity


def test_a_domain_not_running_reports_its_state_only() -> None:
    paused = {**STATS, "state.state": 3}
    assert names(paused, Selection(frozenset({"domain_state", "vcpu"}))) == {
        "domain_state.state", "domain_state.reason"}
    assert names(paused, Selection()) == set()


def test_interface_and_block_device_formats() -> None:
    by_address = names(STATS, Selection(interface_format="address"))
    assert "if_octets-52:54:00:aa:bb:01.rx" in by_address
    assert "if_octets-interface-2.tx" in names(STATS, Selection(interface_format="number"))
    source = names(STATS, Selection(block_format="source"))
    assert "disk_ops-/nfs/img/lab-7.qcow2.read" in source
    assert not any("hdc" in n for n in source)  # no source: collectd leaves it out
    assert "disk_ops-lab-7.qcow2.read" in names(STATS, Selection(block_format="source",
                                                                 block_basename=True))


def test_device_filters_and_ignore_selected() -> None:
    only_vda = Selection(block_devices=IgnoreList(("lab-7:vda",)))
    assert not any("hdc" in n for n in names(STATS, only_vda))
    assert any("vda" in n for n in names(STATS, only_vda))
    not_lt8 = Selection(interface_devices=IgnoreList(("/:lt8$/",), ignore_selected=True))
    got = names(STATS, not_lt8)
    assert any("lt7" in n for n in got) and not any("lt8" in n for n in got)
    # InterfaceFormat number: the filter matches the bare number, as collectd's does.
    numbered = Selection(interface_format="number",
                         interface_devices=IgnoreList(("lab-7:2",), ignore_selected=True))
    assert not any("interface-2" in n for n in names(STATS, numbered))
    # BlockDeviceFormat source with the basename: the filter sees the whole source.
    by_source = Selection(block_format="source", block_basename=True,
                          block_devices=IgnoreList(("/^lab-7:\\/nfs\\//",)))
    assert "disk_ops-lab-7.qcow2.read" in names(STATS, by_source)


def test_reports_can_be_switched_off() -> None:
    got = names(STATS, Selection(report_block=False, report_net=False))
    assert got == {"virt_cpu_total", "memory-total"}


def test_ignorelist_semantics() -> None:
    assert not IgnoreList().ignored("anything")  # empty: keep all
    keep = IgnoreList(("a", "/^b/"))
    assert not keep.ignored("a") and not keep.ignored("bee") and keep.ignored("c")
    drop = IgnoreList(("a", "/^b/"), ignore_selected=True)
    assert drop.ignored("a") and drop.ignored("bee") and not drop.ignored("c")


def test_only_the_groups_the_values_need_are_asked() -> None:
    assert needed_groups(Selection()) == {"state", "cpu-total", "balloon", "interface", "block"}
    assert "vcpu" in needed_groups(Selection(frozenset({"vcpu"})))
    assert needed_groups(Selection(report_block=False, report_net=False)) == {
        "state", "cpu-total", "balloon"}


def test_vcpus_are_keyed_by_their_numbers_not_counted() -> None:
    """vCPU 1 offline (``setvcpus --live`` down, or guest hot-unplug): libvirt gives
    vcpu.0, .2 and .3 with vcpu.current 3, and collectd writes virt_vcpu-0, -2 and -3
    (virt.c keys each by its number). Counting 0..current-1 would lose vCPU 3 and look
    for a vCPU 1 that is not there."""
    gaps: Stats = {**STATS, "vcpu.current": 3, "vcpu.maximum": 4,
            **{f"vcpu.{n}.{k}": 7 for n in (0, 2, 3) for k in ("state", "time", "wait")}}
    assert "vcpu.1.time" not in gaps
    got = names(gaps, Selection(frozenset({"vcpu"}))) - names(gaps, Selection())
    assert got == {"virt_vcpu-0", "virt_vcpu-2", "virt_vcpu-3"}
    values = {v.type_instance: v.key for v in collectd_values(
        gaps, "lab-7", Selection(frozenset({"vcpu"}))) if v.type == "virt_vcpu"}
    assert values == {"0": "vcpu.0.time", "2": "vcpu.2.time", "3": "vcpu.3.time"}


def test_regex_entries_are_posix_extended_as_collectds() -> None:
    """Issue 24, 9: collectd's regcomp(REG_EXTENDED) reads [[:alpha:]] as a class;
    Python's re read a set and a "]", and left the domain out without a word."""
    prod = IgnoreList(("/^[[:alpha:]]+-prod$/",))
    assert not prod.ignored("web-prod") and prod.ignored("web1-prod")
    devices = Selection(block_devices=IgnoreList(("/^lab-[[:digit:]]:vd[[:lower:]]$/",)))
    assert "disk_ops-vda.read" in names(STATS, devices)
    assert not any("hdc" in n for n in names(STATS, devices))


def test_no_job_no_job_stats() -> None:
    """Issue 24, 10: libvirt-python's jobStats() adds the job type to the parameters
    ({"type": 0} when none runs); collectd submits the parameters only, so nothing."""
    idle = {**STATS, "job.type": 0}
    tripleo = Selection(frozenset({"pcpu", "cpu_util", "vcpupin", "vcpu", "memory", "disk",
                                   "disk_err", "disk_allocation", "disk_capacity",
                                   "disk_physical", "domain_state", "job_stats_background",
                                   "perf"}))
    assert not any(n.startswith("job_stats") for n in names(idle, tripleo))
    running = {**idle, "job.type": 2, "job.time_elapsed": 1500, "job.data_total": 4096}
    assert {n for n in names(running, tripleo) if n.startswith("job_stats")} == {
        "job_stats-time_elapsed", "job_stats-data_total"}


def test_a_vcpu_number_past_any_real_one_is_not_a_pin() -> None:
    """int() of 5,000 digits raises: such a key (once out of the supervisor) is no pin."""
    stats: Stats = {"state.state": 1, "vcpu.0.pin.1": 1, "vcpu." + "7" * 5000 + ".pin.1": 1,
                    "vcpu.1234567890.pin.0": 1}
    assert names(stats, Selection(frozenset({"vcpupin"}))) >= {"cpu_affinity-vcpu_0-cpu_1"}
    assert not any("7777" in n or "1234567890" in n
                   for n in names(stats, Selection(frozenset({"vcpupin"}))))
