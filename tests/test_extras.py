"""What the worker adds beside bulk stats: device descriptions and collectd's per-domain
calls (libvirt's test driver for the calls)."""

from __future__ import annotations

import libvirt

from vpartcollect.samples import Stats
from vpartcollect.worker.extras import add_calls, describe_devices
from vpartcollect.worker.inventory import Domain, parse_devices

XML = """<domain><devices>
  <disk type='file'><source file='/srv/a.qcow2'/><target dev='vda'/></disk>
  <disk type='network'><source protocol='rbd' name='pool/img'/><target dev='vdc'/></disk>
  <interface type='bridge'><mac address='52:54:00:00:00:01'/><target dev='vnet0'/></interface>
  <interface type='bridge'><mac address='52:54:00:00:00:02'/><target dev='vnet1'/></interface>
</devices></domain>"""


def domain() -> Domain:
    dom = Domain(None, "u", "d", None, 0.0)
    devices = parse_devices(XML)
    dom.disks, dom.nics = devices.disks, devices.nics
    dom.plain_sources, dom.macs = devices.plain_sources, devices.macs
    return dom


def test_sources_macs_and_numbers_come_from_the_xml() -> None:
    stats: Stats = {"block.count": 2, "block.0.name": "vda", "block.0.path": "/srv/a.qcow2",
                    "block.1.name": "vdc", "net.count": 2, "net.0.name": "vnet0",
                    "net.1.name": "vnet1"}
    describe_devices(domain(), stats)
    assert stats["block.0.source"] == "/srv/a.qcow2"
    assert "block.1.source" not in stats  # a network disk has no plain source: no GetBlockInfo
    assert (stats["net.0.mac"], stats["net.0.number"]) == ("52:54:00:00:00:01", 1)
    assert (stats["net.1.mac"], stats["net.1.number"]) == ("52:54:00:00:00:02", 2)


def test_a_disk_plugged_after_the_xml_was_read_gets_its_image_as_source() -> None:
    stats: Stats = {"block.count": 2, "block.0.name": "vda", "block.0.path": "/srv/b.overlay",
                    "block.1.name": "vdb", "block.1.path": "/srv/new.qcow2"}
    describe_devices(domain(), stats)
    # The snapshot's overlay replaces the XML's image; the new disk is named by its path.
    assert stats["block.0.source"] == "/srv/b.overlay"
    assert stats["block.1.source"] == "/srv/new.qcow2"


def test_pinning_and_disk_errors_of_a_test_driver_domain() -> None:
    conn = libvirt.openReadOnly("test:///default")
    dom = Domain(conn.lookupByName("test"), "u", "test", None, 0.0)
    stats: Stats = {}
    unsupported: set[str] = set()
    add_calls(dom, stats, frozenset({"vcpupin", "disk_err"}), unsupported)
    maps = dom.handle.vcpus()[1]
    pins = {k: v for k, v in stats.items() if ".pin." in k}
    assert len(pins) == len(maps) * len(maps[0]) == 16
    assert all(pins[f"vcpu.{v}.pin.{c}"] == int(maps[v][c])
               for v in range(len(maps)) for c in range(len(maps[0])))
    # The test driver reports one error (VIR_DOMAIN_DISK_ERROR_UNSPEC) on vda.
    assert {k: v for k, v in stats.items() if k.startswith("disk_error.")} == {"disk_error.vda": 1}
    assert unsupported == set()
    conn.close()
