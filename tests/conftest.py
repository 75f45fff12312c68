"""Fixtures shared by the tests: the demo node, and one private libvirtd per session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest
from collectd_lab import settle
from harness import PrivateLibvirtd, _run
from nodes import domain_xml
from runner import DEMO_URI

# A skip whose reason starts so says why CI cannot have that part at all (a kernel feature
# Debian 12 does not have): it stays a skip under CI=true. Every other skip fails there.
CI_CANNOT = "CI cannot have this:"


def in_ci() -> bool:
    """True when the suite runs as CI (CI=true): a missing real part is a failure there."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """Under CI=true a skip is a failure: a skipif on a missing collectd, root or libvirtd
    would otherwise let a broken install pass as green."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if reason.removeprefix("Skipped: ").startswith(CI_CANNOT):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where every real part must be there: {reason}"


# Under pytest-xdist (VPC_TEST_WORKERS=N bin/test: ``-n N --dist loadgroup``) every test
# of one lab of QEMU domains runs on one worker, one after another: a session fixture is
# built once per worker, a lab costs a minute of boot and settle, and two copies of one
# lab would fight over its host-wide tap names. Keyed by file, or by file::test; the rest spreads.
# (pytest-xdist 3.8's own xdist_group marks do nothing on pytest 9.2: it renames the
# item's ``_nodeid`` that the marks used to extend. Hence the table and the scheduler.)
LAB_GROUPS = {
    # The session lab (six QEMUs, six test-driver domains) and its tests, one at a time.
    "tests/test_devices.py": "lab",
    "tests/test_hung_vms.py": "lab",
    "tests/test_kernel_libvirtd.py": "lab",
    "tests/test_libvirtd_restart.py": "lab",
    "tests/test_real_libvirtd.py": "lab",
    "tests/test_truth.py": "lab",
    "tests/test_reload_ticks.py": "lab",
    "tests/test_worker_kills.py": "lab",
    "tests/test_steal.py": "lab",
    "tests/test_respawn_outage.py": "lab",
    "tests/test_staggered_freeze.py": "lab",
    # The other labs (28 QEMUs with FUSE stores; the collectd parity lab), one after
    # another on a second worker.
    "tests/test_outages.py": "labs",
    "tests/test_collectd_configs.py": "labs",
    "tests/test_collectd_parity.py": "labs",
    "tests/test_prometheus_lab.py": "labs",
}
# Tests that keep both cores busy for their whole run (thousands of test-driver domains
# at 1 s ticks, fifty children, a package build). Beside a lab they cost the labs' cpu
# rate and thread checks ticks (and lost their own: 3,000 domains' whole ticks, the
# spooler's kill window), so a parallel run (VPC_TEST_WORKERS) runs them after the
# others, one at a time with the host to themselves (bin/test's second pytest, -m alone).
ALONE = (
    "tests/test_churn.py",
    "tests/test_reload_ticks.py::test_reloads_at_random_phases_3000_test_domains",
    # Its oracle is the test driver's wall-clock cpu within 3 % (30 ms of a 1 s tick):
    # beside the other workers' labs, a read 32 ms late failed it once in 6 runs (r31).
    "tests/test_truth.py::test_late_answers_of_a_wedged_domain_tell_the_truth",
    "tests/test_child_kills.py",
    "tests/test_ctl_pipe.py",
    "tests/test_big_host.py",
    "tests/test_deb.py",
)
# The session labs, by the fixture that builds them: a test using one must be in its group.
LAB_FIXTURES = {"libvirtd": "lab", "testdriver": "lab", "parity_lab": "labs"}


def _under(nodeid: str, key: str) -> bool:
    """Whether a test's node id is the file or test ``key`` names (or one of its cases)."""
    return nodeid == key or nodeid.startswith((f"{key}::", f"{key}[", f"{key}@"))


def lab_group(nodeid: str) -> str | None:
    """The xdist group of a test that drives a private libvirtd, or None."""
    for key, group in LAB_GROUPS.items():
        if _under(nodeid, key):
            return group
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Check that each test of a lab is in the lab's group (a new one fails here, not as a
    second lab colliding with the first), and put the lab groups first, the longest
    running ones: the rest fills the other workers meanwhile. Stable: every worker
    collects the same order."""
    for item in items:
        group = lab_group(item.nodeid)
        alone = any(_under(item.nodeid, key) for key in ALONE)
        if alone:
            item.add_marker(pytest.mark.alone)
        fixtures = set(getattr(item, "fixturenames", ()))
        need = {LAB_FIXTURES[f] for f in fixtures & set(LAB_FIXTURES)}
        # An alone test has the host to itself: its own private libvirtd collides with none.
        if need - {group} or (group is None and not alone
                              and item.get_closest_marker("libvirtd")):
            raise pytest.UsageError(f"{item.nodeid} drives a private libvirtd: add it to "
                                    "LAB_GROUPS (or ALONE) in tests/conftest.py")
    items.sort(key=lambda item: lab_group(item.nodeid) is None)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadgroup with LAB_GROUPS: each lab's tests are one unit of work."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LabScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return lab_group(nodeid) or nodeid

    return LabScheduling(config, log)


@pytest.fixture
def demo_uri() -> str:
    return DEMO_URI


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """A private libvirtd with six tiny QEMU domains: lab-0..5 tagged virt-0,1,2,0,1,2,
    and a second datastore (a tmpfs) at ``store2`` beside its images."""
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp("libvirtd"))
    store2 = daemon.base / "store2"
    store2.mkdir()
    try:
        # Before libvirtd starts: its mount namespace copies the mounts it finds.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "store2", str(store2)],
                       check=True)
        daemon.start()
        for i in range(6):
            daemon.create(f"lab-{i}", f"virt-{i % 3}", nic=f"lt{i}")
        settle({d: daemon.qemu_pid(d) for d in (f"lab-{i}" for i in range(6))})
        yield daemon
    finally:
        daemon.stop()
        subprocess.run(["umount", "-l", str(store2)], check=False)


@pytest.fixture(scope="session")
def testdriver(libvirtd: PrivateLibvirtd) -> Iterator[tuple[str, list[str]]]:
    """libvirt's test driver inside the session's libvirtd, with td-0..5 tagged
    virt-0,1,2,0,1,2 besides its own "test" domain: (URI, names). Its cpu time is the
    wall clock, an oracle for every rate; a dump into a FIFO wedges a domain's lock."""
    conn = libvirt.open(libvirtd.test_uri)
    names = [f"td-{i}" for i in range(6)]
    try:
        running = {d.name() for d in conn.listAllDomains(0)}
        for i, name in enumerate(names):
            if name not in running:
                conn.createXML(domain_xml(name, 200 + i, f"virt-{i % 3}"), 0)
        yield libvirtd.test_uri, ["test", *names]
    finally:
        conn.close()


@pytest.fixture(scope="session")
def parity_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """Four QEMU domains, virt-0..3, with a qcow2 disk that has data, a sparse raw image
    and a fully allocated one besides their own qcow2 (vda)."""
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp("parity"))
    try:
        daemon.start()
        images = daemon.base / "images"
        for i in range(4):
            written, sparse, full = (images / f"w{i}.qcow2", images / f"s{i}.img",
                                     images / f"f{i}.img")
            _run("qemu-img", "create", "-q", "-f", "qcow2", str(written), "64M")
            _run("qemu-io", "-f", "qcow2", "-c", f"write -P 1 0 {i + 1}M", str(written))
            _run("truncate", "-s", "64M", str(sparse))
            _run("fallocate", "-l", "8M", str(full))
            daemon.create(f"par-{i}", f"virt-{i}", nic=f"cp{i}",
                          extra_disks=[("vdb", "qcow2", written), ("vdc", "raw", sparse),
                                       ("vdd", "raw", full)])
        settle({d: daemon.qemu_pid(d) for d in (f"par-{i}" for i in range(4))})
        yield daemon
    finally:
        daemon.stop()


