"""What libvirt's answers mean: block info of image files, devices named, partial answers."""

from __future__ import annotations

from vpartcollect.samples import Stats
from vpartcollect.worker.libvirt_stats import as_block_info, devices_in, monitor_skipped


def test_block_info_meaning_for_file_images_only() -> None:
    # Values measured on libvirt 9.0 for a fresh qcow2 file and a block device.
    stats: dict[str, int | float | str] = {
        "block.count": 3,
        "block.0.name": "vda", "block.0.path": "/var/lib/images/a.qcow2",
        "block.0.capacity": 67108864, "block.0.allocation": 0, "block.0.physical": 200704,
        "block.1.name": "vdb", "block.1.path": "/dev/loop0",
        "block.1.capacity": 33554432, "block.1.allocation": 0, "block.1.physical": 33554432,
        "block.2.name": "vdc", "block.2.path": "/var/lib/images/unprobed.img",
        "block.2.capacity": 1, "block.2.allocation": 1, "block.2.physical": 1}
    as_block_info(stats, {"/var/lib/images/a.qcow2": (196616, 200704)})
    # collectd (virDomainGetBlockInfo): allocation = space taken, physical = file size
    assert (stats["block.0.allocation"], stats["block.0.physical"]) == (200704, 196616)
    assert stats["block.0.capacity"] == 67108864
    # a device node: both APIs agree already
    assert (stats["block.1.allocation"], stats["block.1.physical"]) == (0, 33554432)
    # a file whose size is not known: left out, never sent with the other meaning
    assert "block.2.allocation" not in stats and "block.2.physical" not in stats
    assert stats["block.2.capacity"] == 1


def test_bulk_stats_name_the_devices_of_the_moment() -> None:
    """After a disk-only snapshot the bulk answer names the overlay: what the worker
    probes next."""
    stats: dict[str, int | float | str] = {
        "block.count": 2, "block.0.name": "vda", "block.0.path": "/nfs2/a.overlay",
        "block.1.name": "hdc", "net.count": 1, "net.0.name": "lt1"}
    assert devices_in(stats) == ([("vda", "/nfs2/a.overlay"), ("hdc", "")], ["lt1"])
    assert devices_in({"state.state": 1}) is None  # groups not asked: nothing to say


def test_an_answer_without_the_monitor_part() -> None:
    disk: Stats = {"block.count": 1, "block.0.name": "vda"}
    assert monitor_skipped(disk)
    assert not monitor_skipped({**disk, "block.0.rd.reqs": 7})
    assert monitor_skipped({"balloon.current": 1024})
    assert not monitor_skipped({"state.state": 1})  # neither disk nor balloon: says nothing
