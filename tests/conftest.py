"""Fixtures shared by the tests: the demo node, and one private libvirtd per session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

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


# Labs of real QEMU domains, by the fixture that builds them. Under pytest-xdist
# (bin/test runs ``-n 4 --dist loadgroup``) the tests of one lab share one worker: a
# session fixture is built once per worker, and a lab is a minute of boot and settle.
LAB_FIXTURES = {"libvirtd": "lab", "testdriver": "lab", "parity_lab": "parity"}


def lab_group(item: pytest.Item) -> str | None:
    """The xdist group of a test that drives a private libvirtd with QEMU domains: its
    lab's name (a module's own lab: the module's), or None for any other test."""
    fixtures = set(getattr(item, "fixturenames", ()))
    for fixture, group in LAB_FIXTURES.items():
        if fixture in fixtures:
            return group
    if item.get_closest_marker("libvirtd") is not None:
        return item.nodeid.split("::", 1)[0]
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put each lab's tests in one xdist group (serial, on one worker); the rest spread."""
    for item in items:
        group = lab_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


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


