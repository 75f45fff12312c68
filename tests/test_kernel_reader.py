"""The kernel reader against the real kernel: a process shaped like a QEMU (threads named
``CPU <n>/KVM``, one of them busy) placed in a cgroup of its own, v2 or v1 cpuacct, as
libvirt places QEMU (``<group>/emulator``). Values are checked against the kernel's own
account of each thread (schedstat, to the ns). Needs root (cgroups); the comparison with
libvirt's answers for real QEMU domains is in test_kernel_libvirtd.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpartcollect.kernel_counters import cgroup_paths
from vpartcollect.worker.inventory import Domain
from vpartcollect.worker.kernel_reader import KernelReader, read_text, why_not

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")

FAKE_QEMU = r"""
import ctypes, sys, threading, time
libc = ctypes.CDLL(None)
def vcpu(n, busy):
    libc.prctl(15, f"CPU {n}/KVM".encode(), 0, 0, 0)  # PR_SET_NAME, as QEMU names them
    while True:
        if busy:
            sum(range(20000))
        else:
            time.sleep(0.05)
for n, busy in ((0, True), (1, False)):
    threading.Thread(target=vcpu, args=(n, busy), daemon=True).start()
time.sleep(0.2)
print("ready", flush=True)
sys.stdin.read()
"""


def schedstat(pid: int, tid: int | None = None) -> list[int]:
    path = f"/proc/{pid}/task/{tid}/schedstat" if tid else f"/proc/{pid}/schedstat"
    return [int(x) for x in Path(path).read_text().split()]


def threads_named(pid: int) -> dict[str, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        out[Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()] = int(tid)
    return out


def cpu_ns_of_all_threads(pid: int) -> int:
    return sum(schedstat(pid, int(t))[0] for t in os.listdir(f"/proc/{pid}/task"))


@pytest.fixture
def fake_qemu() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", FAKE_QEMU], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def place(pid: int, root: str) -> Path:
    """Put ``pid`` in ``root``/vpc-test-<pid>/emulator, as libvirt places QEMU."""
    group = Path(root) / f"vpc-test-{pid}"
    (group / "emulator").mkdir(parents=True)
    (group / "emulator" / "cgroup.procs").write_text(str(pid))
    return group


def remove(group: Path) -> None:
    """Remove ``group`` once the process that was in it has gone."""
    for _ in range(50):
        try:
            (group / "emulator").rmdir()
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def domain() -> Domain:
    dom = Domain(None, "6b3c2d7e-0000-4000-8000-000000000001", "fake", None, 0.0)
    dom.interfaces = []
    return dom


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_cpu_and_vcpus_read_from_the_kernel_are_its_own_account(
        fake_qemu: subprocess.Popen[str], version: str) -> None:
    pid = fake_qemu.pid
    reader = KernelReader(lambda d: pid)
    root = reader.v2_root if version == "v2" else reader.v1_root
    if root is None:
        pytest.skip(f"no cgroup {version} cpu accounting on this host")
    group = place(pid, root)
    try:
        dom = domain()
        covered = reader.covers(dom)
        assert covered == {"cpu-total", "vcpu", "interface"}
        time.sleep(0.5)
        truth_before = cpu_ns_of_all_threads(pid)
        stats = reader.read(dom, covered)
        truth_after = cpu_ns_of_all_threads(pid)
        assert stats is not None
        # The cgroup counts every thread of the process since it moved in: at most what
        # its threads used in all (they ran before too), and most of the last 0.5 s.
        assert 0.3e9 <= int(stats["cpu.time"]) <= truth_after
        assert int(stats["cpu.user"]) + int(stats["cpu.system"]) <= int(stats["cpu.time"]) + 2e7
        names = threads_named(pid)
        busy, idle = schedstat(pid, names["CPU 0/KVM"]), schedstat(pid, names["CPU 1/KVM"])
        # vcpu.N.time is the thread's utime + stime, in 10 ms ticks: within two of schedstat.
        assert stats["vcpu.current"] == 2
        assert abs(int(stats["vcpu.0.time"]) - busy[0]) <= 2e7 + (truth_after - truth_before)
        assert int(stats["vcpu.1.time"]) <= idle[0] + 2e7
        assert stats["vcpu.0.state"] == stats["vcpu.1.state"] == 1
        assert 0 <= int(stats["vcpu.0.delay"]) <= busy[1]
        assert stats["net.count"] == 0
        # A second read a second later: the rate is the busy thread's.
        time.sleep(1.0)
        later = reader.read(dom, covered)
        assert later is not None
        rate = int(later["vcpu.0.time"]) - int(stats["vcpu.0.time"])
        truth = schedstat(pid, names["CPU 0/KVM"])[0] - busy[0]
        assert abs(rate - truth) <= 3e7, (rate, truth)
    finally:
        fake_qemu.kill()
        fake_qemu.wait()
        remove(group)


def test_a_qemu_outside_any_cgroup_of_its_own_keeps_libvirtds_counters(
        fake_qemu: subprocess.Popen[str], caplog: pytest.LogCaptureFixture) -> None:
    v2, v1 = cgroup_paths(Path(f"/proc/{fake_qemu.pid}/cgroup").read_text())
    if v2 not in (None, "/") or v1.get("cpuacct", "/") != "/":
        pytest.skip("the tests run in a cgroup of their own: nothing is at the root")
    reader = KernelReader(lambda d: fake_qemu.pid)
    dom = domain()
    with caplog.at_level(logging.WARNING):
        assert reader.covers(dom) == frozenset()
        assert reader.covers(dom) == frozenset()
    said = [r.getMessage() for r in caplog.records]
    assert said == ["fake: counters from libvirtd, not the kernel: its QEMU has no cgroup "
                    "with cpu accounting"]


def test_without_a_pid_nothing_is_covered_and_nothing_said(
        caplog: pytest.LogCaptureFixture) -> None:
    reader = KernelReader(lambda d: None)
    with caplog.at_level(logging.INFO):
        assert reader.covers(domain()) == frozenset()
    assert caplog.records == []


def test_the_kernel_reader_is_for_local_qemu_as_root() -> None:
    assert why_not(True, 0, "QEMU", "qemu:///system") is None
    assert why_not(True, 0, "QEMU", "qemu:///system?socket=/run/x/libvirt-sock") is None
    assert why_not(True, 0, "QEMU", "qemu+unix:///system") is None
    assert why_not(False, 0, "QEMU", "qemu:///system") == "kernel_reader = false"
    assert why_not(True, 0, "QEMU", "qemu+ssh://kvm7/system") == (
        "qemu+ssh://kvm7/system is another host's libvirtd")
    assert why_not(True, 0, "QEMU", "qemu+tcp:///system") is not None
    assert why_not(True, 0, "TEST", "test:///default") == (
        "the TEST driver's domains have no QEMU to read")
    assert why_not(True, 1000, "QEMU", "qemu:///session") == (
        "not root: other users' QEMU processes cannot be read")


def test_a_domain_whose_counters_disagree_with_libvirt_goes_back_to_libvirtd(
        fake_qemu: subprocess.Popen[str], caplog: pytest.LogCaptureFixture) -> None:
    pid = fake_qemu.pid
    reader = KernelReader(lambda d: pid)
    root = reader.v2_root or reader.v1_root
    if root is None:
        pytest.skip("no cgroup cpu accounting on this host")
    group = place(pid, root)
    try:
        dom = domain()
        covered = reader.covers(dom)
        assert reader.due(dom, 60.0)
        first = reader.read(dom, covered)
        assert first is not None
        # libvirt's answer as libvirt 9 gives it (with what only it knows), read just before.
        libvirt_said = {**first, "vcpu.maximum": 4, "vcpu.0.halted": 0,
                        "cpu.haltpoll.success.time": 0}
        assert reader.agree(dom, libvirt_said, covered, 0.05)
        assert not reader.due(dom, 60.0)  # checked: not again before the refresh interval
        assert (reader.read(dom, covered) or {})["vcpu.maximum"] == 4  # libvirt's, kept
        # A libvirt that counts in µs (a unit change): the domain goes back to libvirtd.
        wrong = {**libvirt_said, "cpu.time": int(first["cpu.time"]) // 1000 + 10**9}
        with caplog.at_level(logging.WARNING):
            assert not reader.agree(dom, wrong, covered, 0.05)
        assert reader.covers(dom) == frozenset()
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and said[0].startswith(
            "fake: counters from libvirtd, not the kernel: it disagrees with libvirt: cpu.time:")
    finally:
        fake_qemu.kill()
        fake_qemu.wait()
        remove(group)


def test_a_kernel_file_over_64_kib_is_read_whole(tmp_path: Path) -> None:
    """/proc/net/dev of a host with a thousand taps is ~130 KB: a device past the first
    read must not go missing (its domain would lose its interface values)."""
    lines = [f"{'tap' + str(i):>7}: {i:>12} {1:>9} {0:>4} {0:>4} {0:>4} {0:>5} {0:>10} {0:>9} "
             f"{2 * i:>12} {2:>9} {0:>4} {0:>4} {0:>4} {0:>5} {0:>7} {0:>10}" for i in range(1200)]
    text = "Inter-|   Receive\n face |bytes\n" + "\n".join(lines) + "\n"
    path = tmp_path / "dev"
    path.write_text(text)
    assert len(text) > 2 * 65536
    assert read_text(str(path)) == text


def test_one_read_of_net_dev_serves_a_batch_of_domains(tmp_path: Path) -> None:
    """The host's device list is read once per batch, not once per domain (domains x
    devices of work), and holds each domain's devices only."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "dev").write_text(
        "Inter-|   Receive\n face |bytes\n"
        "  vnet0: 1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n"
        "  vnet1: 5 6 0 0 0 0 0 0 7 8 0 0 0 0 0 0\n"
        "   eth0: 9 9 0 0 0 0 0 0 9 9 0 0 0 0 0 0\n")
    reader = KernelReader(lambda d: None, proc=str(tmp_path), mountinfo="")
    a, b = Domain(None, "a", "a", None, 0.0), Domain(None, "b", "b", None, 0.0)
    a.interfaces, b.interfaces = [("vnet0", True)], [("vnet1", True), ("", False)]
    assert reader.net_devices([a, b]) == {"vnet0": [1, 2] + [0] * 6 + [3, 4] + [0] * 6,
                                          "vnet1": [5, 6] + [0] * 6 + [7, 8] + [0] * 6}
