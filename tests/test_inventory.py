"""The inventory on test-driver domains: tags, devices read only where needed, the seed."""

from __future__ import annotations

from pathlib import Path

import libvirt
from nodes import tagged_node

from vpartcollect.roster import Seed
from vpartcollect.worker.inventory import Domain, Inventory


def open_node(tmp_path: Path, tags: list[str | None]) -> libvirt.virConnect:
    return libvirt.openReadOnly(tagged_node(tmp_path / "node.xml", tags))


def by_name(domains: list[Domain]) -> dict[str, Domain]:
    return {d.name: d for d in domains}


def test_tags_for_all_devices_only_for_own_domains(tmp_path: Path) -> None:
    inv = Inventory(open_node(tmp_path, ["virt-0", "virt-1", None]), 60.0, True)
    doms = by_name(inv.running(own=lambda d: d.tag == "virt-0"))
    assert [doms[n].tag for n in ("domain-A", "domain-B", "domain-C")] == ["virt-0", "virt-1",
                                                                           None]
    assert doms["domain-A"].disks == [("vda", "/img/0.qcow2")]
    assert doms["domain-A"].nics == ["tn0"]
    assert doms["domain-B"].disks is None and doms["domain-C"].disks is None


def test_nothing_is_read_again_until_it_is_stale(tmp_path: Path) -> None:
    inv = Inventory(open_node(tmp_path, ["virt-0", "virt-1"]), 60.0, True)
    handles = inv.listing()
    assert len(inv.to_read(handles, lambda _d: True)) == 2
    inv.update(handles, inv.to_read(handles, lambda _d: True), lambda _d: True)
    assert inv.to_read(inv.listing(), lambda _d: True) == []
    stale = Inventory(inv.conn, 0.0, True)
    stale.running()
    assert len(stale.to_read(stale.listing(), lambda _d: True)) == 2  # refresh 0: always


def test_a_domain_that_becomes_ours_gets_its_devices_read(tmp_path: Path) -> None:
    inv = Inventory(open_node(tmp_path, ["virt-1"]), 60.0, True)
    inv.running(own=lambda _d: False)
    handles = inv.listing()
    work = inv.to_read(handles, lambda _d: True)
    assert len(work) == 1
    assert inv.update(handles, work, lambda _d: True)[0].disks == [("vda", "/img/0.qcow2")]


def test_the_supervisors_seed_replaces_reading_the_tag(tmp_path: Path) -> None:
    conn = open_node(tmp_path, ["virt-1", "virt-1"])
    uuid_a = conn.lookupByName("domain-A").UUIDString()
    inv = Inventory(conn, 60.0, False, seed={uuid_a: ("domain-A", "virt-2", None, None)})
    doms = by_name(inv.running())
    assert (doms["domain-A"].tag, doms["domain-B"].tag) == ("virt-2", "virt-1")
    # The seed is used once: a refresh reads the domain's own metadata again.
    fresh = Inventory(conn, 0.0, False, seed={uuid_a: ("domain-A", "virt-2", None, None)})
    fresh.running()
    assert by_name(fresh.running())["domain-A"].tag == "virt-1"


def test_before_any_listing_the_seed_names_the_domains(tmp_path: Path) -> None:
    """A worker respawned while every listing hangs (a wedged lock) still knows what to
    sample: the supervisor's seed, without handles (the stats call looks them up)."""
    conn = open_node(tmp_path, ["virt-1"])
    uuid_a = conn.lookupByName("domain-A").UUIDString()
    inv = Inventory(conn, 60.0, False, seed={uuid_a: ("domain-A", "virt-1", None, None)})
    seeded = inv.known_or_seeded()
    assert [(d.name, d.tag, d.handle) for d in seeded] == [("domain-A", "virt-1", None)]
    listed = by_name(inv.running())  # once a listing returns, it is the truth again
    assert listed["domain-A"].handle is not None and len(inv.known()) == 1


def test_the_first_listing_replaces_the_seed(tmp_path: Path) -> None:
    """A worker respawned while libvirtd does not answer samples the domains of the
    supervisor's seed, with their interfaces (the kernel reader's part); once a listing
    returns, it wins: a seeded domain no longer running is dropped, a new one added, and
    an empty listing is not filled from the seed again."""
    conn = open_node(tmp_path, ["virt-1", "virt-1"])
    uuid_a = conn.lookupByName("domain-A").UUIDString()
    gone = "00000000-0000-0000-0000-00000000dead"
    seed: Seed = {uuid_a: ("domain-A", "virt-1", None, [("tn0", True)]),
            gone: ("domain-gone", "virt-1", None, [("tn9", True)])}
    inv = Inventory(conn, 60.0, True, seed=seed)
    seeded = by_name(inv.known_or_seeded())
    assert sorted(seeded) == ["domain-A", "domain-gone"]
    assert seeded["domain-A"].interfaces == [("tn0", True)]
    assert seeded["domain-A"].handle is None
    listed = by_name(inv.running())
    assert sorted(listed) == ["domain-A", "domain-B"]
    assert listed["domain-A"].handle is not None and listed["domain-A"].tag == "virt-1"
    assert listed["domain-B"].interfaces == [("tn1", True)]  # read from its XML
    inv.update([], [], lambda _d: True)  # every domain stopped
    assert inv.known_or_seeded() == []
