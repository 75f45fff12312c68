"""Kernel counters parsed as libvirt 9's qemu driver parses them (texts as Linux writes them)."""

from __future__ import annotations

import pytest

from vpartcollect import kernel_counters as kc
from vpartcollect.samples import Stats
from vpartcollect.worker.inventory import parse_devices

CGROUP_HYBRID = """9:name=systemd:/
7:blkio:/machine/qemu-1-lab-0.libvirt-qemu
3:cpuset:/machine/qemu-1-lab-0.libvirt-qemu/emulator
2:cpuacct:/
1:cpu:/machine/qemu-1-lab-0.libvirt-qemu/emulator
0::/machine/qemu-1-lab-0.libvirt-qemu/emulator
"""
CGROUP_V1 = """4:cpu,cpuacct:/machine/qemu-3-web.libvirt-qemu/emulator
1:name=systemd:/system.slice/libvirtd.service
"""


def test_the_domains_cgroup_is_the_parent_of_the_emulator_thread_group() -> None:
    v2, v1 = kc.cgroup_paths(CGROUP_HYBRID)
    assert v2 == "/machine/qemu-1-lab-0.libvirt-qemu/emulator"
    assert kc.domain_cgroup(v2) == "/machine/qemu-1-lab-0.libvirt-qemu"
    assert kc.domain_cgroup(v1["cpuacct"]) is None  # not placed there: the root
    v2, v1 = kc.cgroup_paths(CGROUP_V1)
    assert v2 is None
    assert kc.domain_cgroup(v1["cpuacct"]) == "/machine/qemu-3-web.libvirt-qemu"
    assert v1["cpu"] == v1["cpuacct"]
    # systemd's layout on pure v2 hosts: machine.slice/<scope>/libvirt/emulator.
    assert (kc.domain_cgroup("/machine.slice/machine-qemu\\x2d2\\x2dvm.scope/libvirt/emulator")
            == "/machine.slice/machine-qemu\\x2d2\\x2dvm.scope/libvirt")


def test_cpu_total_from_cgroup_v2_and_v1() -> None:
    v2 = "usage_usec 9985519\nuser_usec 6000000\nsystem_usec 3985519\nnr_periods 0\n"
    assert kc.cpu_from_v2(v2) == {"cpu.time": 9_985_519_000, "cpu.user": 6_000_000_000,
                                  "cpu.system": 3_985_519_000}
    # cpuacct.stat counts clock ticks; libvirt scales them by 1e9/CLK_TCK.
    assert kc.cpu_from_v1("123456789012\n", "user 250\nsystem 75\n", 100) == {
        "cpu.time": 123_456_789_012, "cpu.user": 2_500_000_000, "cpu.system": 750_000_000}
    with pytest.raises(kc.Unreadable):
        kc.cpu_from_v2("nr_periods 0\n")
    with pytest.raises(kc.Unreadable):
        kc.cpu_from_v1("garbage", "user 1\nsystem 1\n", 100)


def test_vcpu_threads_are_named_by_qemu() -> None:
    assert kc.vcpu_number("CPU 0/KVM\n") == 0
    assert kc.vcpu_number("CPU 12/TCG") == 12
    for name in ("qemu-system-x86", "IO mon_iothread", "kvm-nx-lpage-re", "CPU x/KVM",
                 "ALL CPUs/TCG"):
        assert kc.vcpu_number(name) is None


def test_vcpu_time_wait_and_delay() -> None:
    # A comm with a ')' and spaces must not shift the fields (utime 1234, stime 66).
    stat = ("4242 (CPU 0/KVM) (x)) S 1 4200 4200 0 -1 4194624 100 0 0 0 1234 66 0 0 20 0 "
            "1 0 5000 433184768 9985 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 -1 3")
    sched = ("CPU 0/KVM (4242, #threads: 5)\n-----\nse.exec_start : 1.0\n"
             "se.statistics.wait_sum                       :            12.345678\n")
    out = kc.vcpu_stats({0: (stat, sched, "13000000000 4567 99\n"),
                         1: (stat, None, None)}, 100)
    assert out == {"vcpu.current": 2,
                   "vcpu.0.state": 1, "vcpu.0.time": 13_000_000_000, "vcpu.0.wait": 12_345_678,
                   "vcpu.0.delay": 4567,
                   "vcpu.1.state": 1, "vcpu.1.time": 13_000_000_000, "vcpu.1.wait": 0,
                   "vcpu.1.delay": 0}
    # Without CONFIG_SCHEDSTATS the sched file has no wait_sum: libvirt says 0.
    assert kc.sched_wait_ns("se.exec_start : 1.0\nnr_switches : 5\n") == 0
    assert kc.sched_wait_ns("se.wait_sum : 2.5\n") == 2_500_000  # the older name
    with pytest.raises(kc.Unreadable):
        kc.thread_cpu_ns("4242 (x) S 1", 100)


# /proc/net/dev as Linux writes it (lines are long: built from their fields here).
NET_DEV = "\n".join([
    "Inter-|   Receive                                                |  Transmit",
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs "
    "drop fifo colls carrier compressed",
    "    lo: 217453273   29787    0    0    0     0          0         0 217453273   29787"
    "    0    0    0     0       0          0",
    " vnet0:     356       4    1    2    0     0          0         0    90210     77    3"
    "    4    0     0       0          0",
    "macvtap3:    10       1    0    0    0     0          0         0       20      2    0"
    "    0    0     0       0          0", ""])


def test_tap_counters_are_swapped_to_the_guests_view() -> None:
    counters = kc.net_dev(NET_DEV)
    assert counters["vnet0"][:4] == [356, 4, 1, 2]
    assert kc.net_dev(NET_DEV, {"vnet0", "gone0"}) == {"vnet0": counters["vnet0"]}
    out = kc.interface_stats([("vnet0", True), ("", True), ("macvtap3", False),
                              ("gone0", True)], counters)
    assert out == {
        "net.count": 4,
        # The tap sent 90210 bytes: the guest received them.
        "net.0.name": "vnet0", "net.0.rx.bytes": 90210, "net.0.rx.pkts": 77,
        "net.0.rx.errs": 3, "net.0.rx.drop": 4, "net.0.tx.bytes": 356, "net.0.tx.pkts": 4,
        "net.0.tx.errs": 1, "net.0.tx.drop": 2,
        # A macvtap shares the host's view: not swapped.
        "net.2.name": "macvtap3", "net.2.rx.bytes": 10, "net.2.rx.pkts": 1,
        "net.2.rx.errs": 0, "net.2.rx.drop": 0, "net.2.tx.bytes": 20, "net.2.tx.pkts": 2,
        "net.2.tx.errs": 0, "net.2.tx.drop": 0,
        # A device libvirt cannot find in /proc/net/dev: its name only, as libvirt does.
        "net.3.name": "gone0"}


def test_which_interfaces_are_taps_whose_view_libvirt_swaps() -> None:
    """libvirt swaps rx/tx unless virDomainNetTypeSharesHostView (macvtap only); vhost-user
    counters come from Open vSwitch, and a network handing out macvtaps has no bridge."""
    xml = """<domain><devices>
      <interface type='bridge'><source bridge='br0'/><target dev='vnet0'/></interface>
      <interface type='ethernet'><target dev='tap7'/></interface>
      <interface type='network'><source network='default' bridge='virbr0'/>
        <target dev='vnet1'/></interface>
      <interface type='network'><source network='passthrough' dev='eth1'/>
        <target dev='macvtap0'/></interface>
      <interface type='direct'><source dev='eth1' mode='bridge'/><target dev='macvtap1'/>
        </interface>
      <interface type='vhostuser'><source type='unix' path='/run/vu0' mode='server'/>
        <target dev='vhost-user0'/></interface>
      <interface type='user'/>
    </devices></domain>"""
    assert parse_devices(xml).interfaces == [
        ("vnet0", True), ("tap7", True), ("vnet1", True), ("macvtap0", False),
        ("macvtap1", False), ("vhost-user0", False), ("", False)]


LIBVIRT: Stats = {"cpu.time": 5_000_000_000, "cpu.user": 3_000_000_000, "cpu.system": 1_000_000_000,
           "cpu.haltpoll.success.time": 7, "vcpu.current": 1, "vcpu.maximum": 2,
           "vcpu.0.state": 1, "vcpu.0.time": 4_000_000_000, "vcpu.0.wait": 0,
           "vcpu.0.delay": 10, "vcpu.0.halted": 1, "net.count": 1, "net.0.name": "vnet0",
           "net.0.rx.bytes": 100, "net.0.rx.pkts": 1, "net.0.rx.errs": 0, "net.0.rx.drop": 0,
           "net.0.tx.bytes": 200, "net.0.tx.pkts": 2, "net.0.tx.errs": 0, "net.0.tx.drop": 0}


def kernel_view(**changes: int | str) -> Stats:
    out: Stats = {k: v for k, v in LIBVIRT.items()
                                         if k not in ("cpu.haltpoll.success.time",
                                                      "vcpu.maximum", "vcpu.0.halted")}
    out.update(changes)
    return out


def test_the_two_sources_agree_within_what_can_pass_between_the_reads() -> None:
    assert kc.disagreements(kernel_view(), LIBVIRT, 0.01, 2) == []
    # 20 ms later on 2 CPUs: up to (0.01 + 0.02) * 2e9 ns more is time passing.
    assert kc.disagreements(kernel_view(**{"cpu.time": 5_050_000_000}), LIBVIRT, 0.01, 2) == []
    assert kc.disagreements(kernel_view(**{"net.0.rx.bytes": 1500}), LIBVIRT, 0.01, 2) == []


def test_a_difference_in_names_units_or_orientation_is_reported() -> None:
    missing = kernel_view()
    del missing["vcpu.0.delay"]
    assert kc.disagreements(missing, LIBVIRT, 0.01, 2) == ["vcpu.0.delay: only libvirt has it"]
    assert kc.disagreements(kernel_view(**{"net.0.name": "vnet1"}), LIBVIRT, 0.01, 2) == [
        "net.0.name: libvirt 'vnet0', kernel 'vnet1'"]
    # µs instead of ns; rx and tx the other way round (a growing rx passes, tx went back):
    assert kc.disagreements(kernel_view(**{"cpu.time": 5_000_000}), LIBVIRT, 0.01, 2) == [
        "cpu.time: libvirt 5000000000, kernel 5000000"]
    swapped = kernel_view(**{"net.0.rx.bytes": 200, "net.0.tx.bytes": 100})
    assert kc.disagreements(swapped, LIBVIRT, 0.01, 2) == [
        "net.0.tx.bytes: libvirt 200, kernel 100"]
    assert kc.disagreements(kernel_view(**{"vcpu.current": 2}), LIBVIRT, 0.01, 2) == [
        "vcpu.current: libvirt 1, kernel 2"]
