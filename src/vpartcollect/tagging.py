"""``vpartcollect tag``: write or clear domain tags (needs a read-write connection)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import libvirt

from vpartcollect.autotag import Proposal, propose, storage_backends
from vpartcollect.libvirt_conn import error_text, open_readonly, quiet_libvirt
from vpartcollect.mounts import read_mounts
from vpartcollect.partition import TAG_NS, TAG_PREFIX, is_valid_tag, tag_element
from vpartcollect.planning import render_table
from vpartcollect.worker.inventory import read_tag


class TagCommandError(Exception):
    """A tagging problem, worded for the operator in one line."""


def open_conn(uri: str, write: bool) -> Any:
    """A read-write connection to write tags (virDomainSetMetadata); read-only otherwise."""
    quiet_libvirt()
    try:
        return libvirt.open(uri) if write else open_readonly(uri)
    except libvirt.libvirtError as exc:
        raise TagCommandError(f"cannot connect to libvirt at {uri}"
                              f"{' read-write' if write else ''}: "
                              f"{error_text(exc)}") from None


def set_tag(conn: Any, domain: str, tag: str | None) -> None:
    """Set (or with None, remove) a domain's tag, live and in its persistent definition."""
    if tag is not None and not is_valid_tag(tag):
        raise TagCommandError(f"bad tag {tag!r}: use virt-N, N a number without leading zeros")
    try:
        dom = conn.lookupByName(domain)
        flags = 0
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        if dom.isPersistent():
            flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if tag is None:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, TAG_NS, flags)
        else:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, tag_element(tag), TAG_PREFIX,
                            TAG_NS, flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise TagCommandError(f"no domain named {domain!r}") from None
        raise TagCommandError(f"{domain}: cannot write the tag: "
                              f"{error_text(exc)}") from None


def auto_proposals(conn: Any, instances: int, mounts_file: Path = Path("/proc/self/mounts")
                   ) -> list[tuple[Proposal, str | None]]:
    """(proposal, current tag) for every defined domain, grouped by storage backend."""
    mounts = read_mounts(mounts_file.read_text())
    domains, current = [], {}
    try:
        for dom in conn.listAllDomains(0):
            name = dom.name()
            domains.append((name, storage_backends(dom.XMLDesc(0), mounts)))
            current[name] = read_tag(dom, set())
    except libvirt.libvirtError as exc:
        raise TagCommandError(f"cannot read domains: {error_text(exc)}") from None
    return [(p, current[p.domain]) for p in propose(domains, instances)]


def render_proposals(rows: list[tuple[Proposal, str | None]]) -> str:
    """A table: domain, current tag, proposed tag, storage backends."""
    table = [("DOMAIN", "CURRENT", "PROPOSED", "STORAGE")]
    table += [(p.domain, cur or "-", p.tag, ", ".join(p.storage) or "local")
              for p, cur in rows]
    return render_table(table)
