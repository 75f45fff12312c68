"""Device lists follow the domain: a hot-plugged disk and a disk-only snapshot whose
overlay lives on another datastore get their allocation and size within two intervals.

Real QEMU under the session's libvirtd; the new images live on a tmpfs (``store2``),
another filesystem than the first image's. The expected values are the images' own
stat(), read by the test: what virDomainGetBlockInfo, and so collectd, reports.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from harness import PrivateLibvirtd
from runner import run_during

pytestmark = pytest.mark.libvirtd

Line = tuple[str, float, float]


def virsh(libvirtd: PrivateLibvirtd, *args: str) -> None:
    done = subprocess.run(["virsh", "-q", "-c", libvirtd.uri, *args], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, f"virsh {' '.join(args)}: {done.stderr}"


def first_tick_with(lines: list[Line], path: str, value: float, since: float) -> int | None:
    hits = [int(ts) for p, v, ts in lines if p == path and v == value and ts >= since]
    return min(hits) if hits else None


def test_new_disks_and_snapshot_overlays_are_followed(libvirtd: PrivateLibvirtd) -> None:
    name = "dev-0"
    base = libvirtd.base / "images" / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", str(base)], check=True,
                   capture_output=True)
    store2 = libvirtd.base / "store2"
    extra, overlay = store2 / f"{name}-vdb.qcow2", store2 / f"{name}-vda.overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(extra), "32M"], check=True)
    libvirtd.create(name, "virt-0", nic="ld0", acpi=True)
    events: dict[str, float] = {}

    def change(_proc: subprocess.Popen[str]) -> None:
        # Each change is timed from when virsh returns: the disk exists from then on (a
        # change started just before a tick may finish after that tick's read).
        time.sleep(4)
        virsh(libvirtd, "attach-disk", name, str(extra), "vdb", "--live", "--subdriver",
              "qcow2", "--targetbus", "virtio")
        events["attach"] = time.time()
        time.sleep(5)
        virsh(libvirtd, "snapshot-create-as", name, "--disk-only", "--atomic", "--no-metadata",
              "--diskspec", f"vda,file={overlay}", "--diskspec", "vdb,snapshot=no")
        events["snapshot"] = time.time()
        time.sleep(5)

    try:
        lines, stderr, _ = run_during(["run", "--connect", libvirtd.uri, "--interval", "1",
                                       "--extra-stats", "disk_allocation disk_physical",
                                       "--include", f"^{name}$"], change)
    finally:
        virsh(libvirtd, "destroy", name)
        virsh(libvirtd, "undefine", name)
        libvirtd.domains.remove(name)
    for disk, image, when in (("vdb", extra, events["attach"]),
                              ("vda", overlay, events["snapshot"])):
        st = os.stat(image)
        for metric, value in (("disk_physical", st.st_size),
                              ("disk_allocation", st.st_blocks * 512)):
            path = f"{name}.virt.{metric}-{disk}"
            seen = first_tick_with(lines, path, value, when)
            # The first tick after the change names it; the next one reports its sizes.
            assert seen is not None and seen <= int(when) + 2, (path, value, when, seen,
                                                                stderr[-2000:])
    before = os.stat(base)
    assert first_tick_with(lines, f"{name}.virt.disk_physical-vda", before.st_size, 0) is not None
    assert before.st_size != os.stat(overlay).st_size
    assert "devices changed" in stderr
