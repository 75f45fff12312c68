"""Mount tables as a process sees them: escapes, mountinfo devices, stacked mounts."""

from __future__ import annotations

from vpartcollect.mounts import Mount, mount_of, read_mountinfo, read_mounts


def test_mounts_are_unescaped() -> None:
    mounts = read_mounts("nfs1:/export/vms /mnt/nfs\\040a nfs4 rw 0 0\n")
    assert mounts == [Mount("nfs1:/export/vms", "/mnt/nfs a", "nfs4")]


def test_mountinfo_gives_each_filesystem_its_device() -> None:
    text = ("22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
            "98 22 0:52 / /mnt/nfs\\040a rw,relatime shared:40 master:3 - nfs4 nas:/vms rw\n"
            "99 22 0:53 /sub /srv rw - fuse stallfs rw\n"
            "30 25 0:26 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n"
            "garbage line\n")
    assert read_mountinfo(text) == [
        Mount("/dev/vda1", "/", "ext4", "253:1", "rw"),
        Mount("nas:/vms", "/mnt/nfs a", "nfs4", "0:52", "rw"),
        Mount("stallfs", "/srv", "fuse", "0:53", "rw"),
        Mount("cgroup", "/sys/fs/cgroup/cpuacct", "cgroup", "0:26", "rw,cpuacct")]
    assert Mount("nas:/vms", "/mnt/nfs", "nfs4", "0:52").store == "dev:0:52"
    assert Mount("nas:/vms", "/mnt/nfs", "nfs4").store == "/mnt/nfs"


def test_the_longest_mount_point_wins() -> None:
    mounts = read_mounts("/dev/vda1 / ext4 rw 0 0\nnas:/x /mnt/nfs nfs4 rw 0 0\n"
                         "/dev/sdb1 /mnt/nfsx xfs rw 0 0\n")
    assert mount_of("/mnt/nfs/a.qcow2", mounts) == mounts[1]
    assert mount_of("/mnt/nfsx/a.qcow2", mounts) == mounts[2]  # a prefix of the name only
    assert mount_of("/var/a.img", mounts) == mounts[0]


def test_an_automounted_share_is_the_share_not_autofs() -> None:
    """systemd's automount (or autofs) lists its autofs entry first on the mount point and
    the NFS export it mounted after it, on top: a path reaches the export."""
    mounts = read_mounts("/dev/vda1 / ext4 rw 0 0\n"
                         "systemd-1 /mnt/vms autofs rw,fd=45,pgrp=1,timeout=0 0 0\n"
                         "nas:/export/vms /mnt/vms nfs4 rw,vers=4.2 0 0\n")
    found = mount_of("/mnt/vms/a.qcow2", mounts)
    assert found is not None and found.fstype == "nfs4"
