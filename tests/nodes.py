"""Libvirt test-driver node files written by the tests (domains, tags, devices)."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from vpartcollect.partition import TAG_NS


def domain_xml(name: str, index: int, tag: str | None = None, metadata: str | None = None) -> str:
    """One running test-driver domain with a disk, a NIC and a balloon."""
    if metadata is None and tag is not None:
        metadata = f'<ovirtmap:tag xmlns:ovirtmap="{TAG_NS}">{escape(tag)}</ovirtmap:tag>'
    meta = f"<metadata>{metadata}</metadata>" if metadata else ""
    return f"""<domain type='test'>
  <name>{escape(name)}</name>
  <uuid>00000000-0000-4000-8000-{index:012x}</uuid>
  <memory unit='MiB'>256</memory><currentMemory unit='MiB'>256</currentMemory>
  <vcpu>2</vcpu><os><type arch='x86_64'>hvm</type></os>
  {meta}
  <devices>
    <disk type='file' device='disk'><source file='/img/{index}.qcow2'/>
      <target dev='vda' bus='virtio'/></disk>
    <interface type='ethernet'><mac address='52:54:00:00:01:{index % 256:02x}'/>
      <target dev='tn{index}'/></interface>
    <memballoon model='virtio'/>
  </devices>
</domain>"""


def write_node(path: Path, domains: list[str]) -> str:
    """Write a node file; return its test:/// URI."""
    path.write_text("<node>\n" + "\n".join(domains) + "\n</node>\n")
    return f"test://{path.resolve()}"


def tagged_node(path: Path, tags: list[str | None], prefix: str = "domain-") -> str:
    """Domains named prefix + A, B, ... (prefix + 0000, 0001, ... past 26) with the given tags."""
    if len(tags) <= 26:
        names = [prefix + chr(ord("A") + i) for i in range(len(tags))]
    else:
        names = [f"{prefix}{i:04d}" for i in range(len(tags))]
    return write_node(path, [domain_xml(n, i, t) for i, (n, t) in enumerate(zip(names, tags,
                                                                                 strict=True))])
