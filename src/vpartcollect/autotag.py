"""``tag --auto``: domains that share a storage backend share a partition. Pure functions.

A storage outage stalls every domain on that storage; putting them in one
partition keeps the stall out of the others. Backends are read from the disk
sources of the domain XML: network disks by protocol, host and pool/target;
block devices by their iSCSI/FC path; volumes by storage pool; files by the
mount they live on (an NFS/CIFS/Gluster/Ceph export is a backend, a local
filesystem is not).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vpartcollect import safexml
from vpartcollect.mounts import Mount, mount_of
from vpartcollect.partition import instance_name

NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "glusterfs", "fuse.glusterfs", "ceph",
              "fuse.ceph", "ocfs2", "gfs2", "lustre", "9p"}


def _file_backend(path: str, mounts: Sequence[Mount]) -> str | None:
    best = mount_of(path, mounts)
    if best is not None and best.fstype in NETWORK_FS:
        return store_name(best)
    return None


def store_name(mount: Mount) -> str:
    """A datastore as an operator knows it: a network filesystem as this module names
    its backend (``nfs:server:/export``), any other by its mount point."""
    return f"{mount.fstype}:{mount.source}" if mount.fstype in NETWORK_FS else mount.target


def _block_backend(dev: str) -> str | None:
    # /dev/disk/by-path/ip-10.0.0.5:3260-iscsi-iqn.2001-05.com.x:tgt-lun-3 -> portal + target
    m = re.search(r"ip-([^/]+?)-iscsi-(.+?)-lun-\d+$", dev)
    if m:
        return f"iscsi:{m.group(1)}/{m.group(2)}"
    m = re.search(r"fc-(0x[0-9a-f]+)-lun-\d+$", dev)
    if m:
        return f"fc:{m.group(1)}"
    return None


def storage_backends(domain_xml: str, mounts: Sequence[Mount]) -> set[str]:
    """The network storage backends a domain's disks use (empty: local storage only)."""
    try:
        root = safexml.parse(domain_xml)
    except safexml.XMLRefused:
        return set()
    keys: set[str] = set()
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        if source is None:
            continue
        kind = disk.get("type", "file")
        if kind == "network":
            protocol = source.get("protocol", "network")
            hosts = sorted(h.get("name", "") for h in source.iterfind("host"))
            name = source.get("name", "")
            # rbd pool/image, iscsi iqn/lun, gluster volume/path: the first part is shared
            head = name.split("/", 1)[0]
            keys.add(f"{protocol}:{','.join(hosts)}/{head}")
        elif kind == "volume" and source.get("pool"):
            keys.add(f"pool:{source.get('pool')}")
        elif kind == "block" and source.get("dev"):
            key = _block_backend(source.get("dev", ""))
            if key:
                keys.add(key)
        elif kind == "file" and source.get("file"):
            key = _file_backend(source.get("file", ""), mounts)
            if key:
                keys.add(key)
        elif kind == "dir" and source.get("dir"):
            key = _file_backend(source.get("dir", "") + "/", mounts)
            if key:
                keys.add(key)
    return keys


@dataclass(frozen=True)
class Proposal:
    """The tag ``tag --auto`` proposes for one domain, and why."""

    domain: str
    tag: str
    storage: tuple[str, ...]  # the backends that tie it to its group; empty when local


def propose(domains: Iterable[tuple[str, set[str]]], instances: int) -> list[Proposal]:
    """Group domains that share any backend; spread groups, then the rest, by load.

    Groups go largest first to the least loaded instance (ties: lowest number);
    domains on local storage alone go one by one to whichever is least loaded.
    """
    items = sorted(domains)
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_user: dict[str, int] = {}
    for i, (_, keys) in enumerate(items):
        for key in sorted(keys):
            if key in first_user:
                parent[find(i)] = find(first_user[key])
            else:
                first_user[key] = i
    groups: dict[int, list[int]] = {}
    local: list[int] = []
    for i, (_, keys) in enumerate(items):
        (groups.setdefault(find(i), []) if keys else local).append(i)
    load = [0] * instances
    owner: dict[int, int] = {}
    for members in sorted(groups.values(), key=lambda g: (-len(g), items[g[0]][0])):
        target = min(range(instances), key=lambda n: (load[n], n))
        load[target] += len(members)
        for i in members:
            owner[i] = target
    for i in local:
        target = min(range(instances), key=lambda n: (load[n], n))
        load[target] += 1
        owner[i] = target
    return [Proposal(name, instance_name(owner[i]), tuple(sorted(keys)))
            for i, (name, keys) in enumerate(items)]
