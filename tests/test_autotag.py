"""Storage-aware tag proposals: backends from disk sources, grouping and balance."""

from __future__ import annotations

from vpartcollect.autotag import propose, storage_backends
from vpartcollect.mounts import read_mounts

MOUNTS = read_mounts(
    "/dev/vda1 / ext4 rw 0 0\n"
    "nfs1:/export/vms /mnt/nfs\\040a nfs4 rw 0 0\n"
    "nfs2:/vol /mnt/nfs-b nfs rw 0 0\n"
    "/dev/sdb1 /var/lib/libvirt/images xfs rw 0 0\n")


def disks(*xml: str) -> str:
    return f"<domain><devices>{''.join(xml)}</devices></domain>"


def test_file_disks_by_mount() -> None:
    nfs = disks("<disk type='file'><source file='/mnt/nfs a/x.qcow2'/></disk>")
    local = disks("<disk type='file'><source file='/var/lib/libvirt/images/y.qcow2'/></disk>")
    assert storage_backends(nfs, MOUNTS) == {"nfs4:nfs1:/export/vms"}
    assert storage_backends(local, MOUNTS) == set()


def test_network_block_and_volume_disks() -> None:
    xml = disks(
        "<disk type='network'><source protocol='rbd' name='pool1/img7'>"
        "<host name='mon2'/><host name='mon1'/></source></disk>",
        "<disk type='block'><source dev='/dev/disk/by-path/ip-10.0.0.5:3260-iscsi-"
        "iqn.2001-05.com.example:store-lun-3'/></disk>",
        "<disk type='volume'><source pool='fast' volume='v1'/></disk>",
        "<disk type='network'><source protocol='gluster' name='gv0/images/a.img'>"
        "<host name='g1'/></source></disk>",
        "<disk type='file' device='cdrom'/>",
    )
    assert storage_backends(xml, MOUNTS) == {
        "rbd:mon1,mon2/pool1", "iscsi:10.0.0.5:3260/iqn.2001-05.com.example:store",
        "pool:fast", "gluster:g1/gv0"}


def test_hostile_xml_means_no_backend() -> None:
    assert storage_backends('<!DOCTYPE d [<!ENTITY x "y">]><domain>&x;</domain>', MOUNTS) == set()


def test_domains_sharing_storage_share_a_partition_and_groups_balance() -> None:
    domains = [("a1", {"nfs:A"}), ("a2", {"nfs:A"}), ("a3", {"nfs:A", "rbd:X"}),
               ("x1", {"rbd:X"}), ("b1", {"nfs:B"}), ("b2", {"nfs:B"}),
               ("l1", set()), ("l2", set()), ("l3", set())]
    got = {p.domain: p.tag for p in propose(domains, 3)}
    # a1..a3 and x1 are one group (a3 bridges nfs:A and rbd:X): largest goes first.
    assert {got[d] for d in ("a1", "a2", "a3", "x1")} == {"virt-0"}
    assert {got[d] for d in ("b1", "b2")} == {"virt-1"}
    # local-only domains fill the least loaded partitions: 4 / 2 / 0 -> 4 / 3 / 2
    assert sorted(got[d] for d in ("l1", "l2", "l3")) == ["virt-1", "virt-2", "virt-2"]


def test_one_instance_tags_everything_virt_0() -> None:
    assert {p.tag for p in propose([("a", {"k"}), ("b", set())], 1)} == {"virt-0"}


def test_automounted_nfs_is_the_nfs_backend() -> None:
    """An x-systemd.automount share: autofs first on the mount point, then the real nfs4."""
    mounts = read_mounts("/dev/vda1 / ext4 rw 0 0\n"
                         "systemd-1 /mnt/vms autofs rw,fd=45 0 0\n"
                         "nas:/export/vms /mnt/vms nfs4 rw 0 0\n")
    nfs = disks("<disk type='file'><source file='/mnt/vms/x.qcow2'/></disk>")
    assert storage_backends(nfs, mounts) == {"nfs4:nas:/export/vms"}
