"""The collector against a real libvirtd with real QEMU domains: paths and values."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from harness import PrivateLibvirtd
from runner import cli, no_traceback, parse_lines

pytestmark = pytest.mark.libvirtd

# The ExtraStats of collectd's run that wrote the reference paths.
REFERENCE_EXTRA = ("cpu_util disk disk_err domain_state pcpu vcpupin disk_allocation "
                   "disk_capacity disk_physical memory")
REFERENCE = Path(__file__).parent / "data" / "collectd-virt-paths.txt"


def test_qemu_domains_get_collectd_paths(libvirtd: PrivateLibvirtd) -> None:
    res = cli("run", "--connect", libvirtd.uri, "--instances", "3", "--once", "--extra-stats",
              REFERENCE_EXTRA)
    assert res.returncode == 0, res.stderr
    no_traceback(res.stderr)
    paths: dict[str, set[str]] = defaultdict(set)
    values = {}
    for path, value, _ in parse_lines(res.stdout):
        host, rest = path.split(".", 1)
        paths[host].add(rest)
        values[path] = value
    reference = {p.split(".", 1)[1] for p in REFERENCE.read_text().split()}
    for i in range(6):
        ours = paths[f"lab-{i}"]
        expected = {p.replace("-lt7", f"-lt{i}") for p in reference} | {"virt.unresponsive"}
        assert expected == ours, (i, sorted(expected - ours), sorted(ours - expected))
        assert values[f"lab-{i}.virt.memory-actual_balloon"] == 64 * 1024 * 1024
        assert values[f"lab-{i}.virt.disk_capacity-vda"] == 64 * 1024 * 1024
        assert values[f"lab-{i}.virt.unresponsive"] == 0
    domains = {p: v for p, v in values.items() if p.endswith(".domains")}
    assert sorted(domains.values()) == [2, 2, 2]


def test_plan_on_real_metadata(libvirtd: PrivateLibvirtd) -> None:
    res = cli("plan", "--connect", libvirtd.uri, "--instances", "2")
    rows = [line.split()[:3] for line in res.stdout.splitlines()[1:]]
    assert rows == [[f"lab-{i}", f"virt-{i % 3}", str(i % 3 if i % 3 < 2 else 0)]
                    for i in range(6)]


def test_tag_live_and_persistent(libvirtd: PrivateLibvirtd) -> None:
    try:
        res = cli("tag", "--connect", libvirtd.uri, "lab-5", "virt-0")
        assert res.returncode == 0, res.stderr
        for flag in ([], ["--inactive"]):
            xml = subprocess.run(["virsh", "-c", libvirtd.uri, "dumpxml", *flag, "lab-5"],
                                 capture_output=True, text=True, check=True).stdout
            assert ">virt-0</ovirtmap:tag>" in xml, flag
        plan = json.loads(cli("plan", "--connect", libvirtd.uri, "--instances", "3",
                              "--json").stdout)
        assert next(r for r in plan if r["domain"] == "lab-5")["instance"] == 0
    finally:
        assert cli("tag", "--connect", libvirtd.uri, "lab-5", "virt-2").returncode == 0


def test_auto_tag_on_local_disks_balances(libvirtd: PrivateLibvirtd) -> None:
    res = cli("tag", "--connect", libvirtd.uri, "--auto", "--instances", "3")
    assert res.returncode == 0, res.stderr
    proposed = [line.split()[2] for line in res.stdout.splitlines()[1:-1]]
    assert sorted(proposed) == ["virt-0", "virt-0", "virt-1", "virt-1", "virt-2", "virt-2"]


def test_auto_tag_dry_run_needs_only_read_access(libvirtd: PrivateLibvirtd) -> None:
    """A dry run works on libvirtd's read-only socket; only --apply needs write access."""
    ro = f"qemu:///system?socket={libvirtd.base}/sock/libvirt-sock-ro"
    res = cli("tag", "--connect", ro, "--auto", "--instances", "3")
    assert res.returncode == 0, res.stderr
    assert "dry run: nothing written" in res.stdout
    applied = cli("tag", "--connect", ro, "--auto", "--instances", "2", "--apply")
    assert applied.returncode == 2 and applied.stderr.count("\n") == 1, applied.stderr
    assert "read only access prevents" in applied.stderr or "read-write" in applied.stderr
