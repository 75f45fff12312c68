"""Which domains run, their tags and devices, and whether their monitor is stuck.

Every call here is answered by libvirtd alone (listAllDomains, metadata,
XMLDesc, controlInfo): none of them waits for a QEMU monitor, so none blocks on
a hung VM. Tags are cached and re-read every ``refresh_interval``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from vpartcollect import safexml
from vpartcollect.partition import TAG_NS, TagError, is_valid_tag, parse_tag
from vpartcollect.roster import Seed
from vpartcollect.worker.datastores import Image, is_file_image

log = logging.getLogger(__name__)

# controlInfo states: 0 OK, 1 JOB, 2 OCCUPIED, 3 ERROR.
_CONTROL_OCCUPIED = 2
_CONTROL_ERROR = 3
# A monitor call that has held the domain this long is not a passing query.
STUCK_AFTER_MS = 1000


@dataclass
class Domain:
    """One running domain as this worker knows it."""

    handle: Any  # libvirt.virDomain
    uuid: str
    name: str
    tag: str | None
    read_at: float
    label: str | None = None  # hostname_format "metadata" value
    # Read for the domains this worker samples only (None: not read yet), from the XML at
    # each refresh, and from every bulk answer that names them (a snapshot, a pivot or a
    # hot-plug changes them under a running domain).
    disks: list[tuple[str, str]] | None = None  # (target dev, source)
    nics: list[str] = field(default_factory=list)  # target devs
    stores: dict[str, list[Image]] | None = None  # {datastore: its images}, when needed
    # From the XML, for collectd's device names: target -> source file or device (not a
    # network disk's name), and the interfaces with a target, in order -> MAC address.
    plain_sources: dict[str, str] = field(default_factory=dict)
    macs: dict[str, str | None] = field(default_factory=dict)
    # Every interface in the XML's order (libvirt's net.<i> numbering): (host device or
    # "", whether it is a tap whose rx/tx are the guest's tx/rx). None: not read yet.
    interfaces: list[tuple[str, bool]] | None = None
    told: list[tuple[str, bool]] | None = None  # the interfaces last sent to the supervisor

    def __repr__(self) -> str:
        return (f"<Domain {self.name} {self.uuid} tag={self.tag} "
                f"disks={len(self.disks) if self.disks is not None else '?'}>")

    def forget_devices(self) -> None:
        """Have the devices read from the XML again at the next listing (they changed
        under the running domain: a hot-plug)."""
        self.disks, self.stores = None, None

    def devices_changed(self, disks: list[tuple[str, str]], nics: list[str]) -> bool:
        """Take the devices a bulk answer named; True when they differ from what was known
        (the datastores of the new images are then worked out, and probed, again). Only
        targets and image files count: the XML names a network disk's source, bulk
        stats do not."""
        def files(found: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
            return None if found is None else [(t, s if is_file_image(s) else "")
                                               for t, s in found]
        if files(disks) == files(self.disks) and nics == self.nics:
            return False
        if files(disks) != files(self.disks):
            self.stores = None
        self.disks, self.nics = disks, nics
        return True


def read_tag(dom: Any, warned: set[str], adopter: bool = False) -> str | None:
    """The domain's partition tag; untagged (None) on any problem, warned once per domain.

    ``adopter`` (the worker of virt-0, which samples them) also warns once about a
    tag that is not of the ``virt-N`` scheme.
    """
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, TAG_NS)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            _warn_once(warned, dom.UUIDString(), "%s: cannot read tag metadata (%s); "
                       "treating it as untagged", dom.name(), exc.get_error_message())
        return None
    try:
        tag = parse_tag(xml)
    except TagError as exc:
        _warn_once(warned, dom.UUIDString(), "%s: %s; treating it as untagged", dom.name(), exc)
        return None
    if adopter and tag is not None and not is_valid_tag(tag):
        _warn_once(warned, dom.UUIDString(), "%s: tag %r is not virt-N; virt-0 samples it",
                   dom.name(), tag)
    return tag


def read_label(dom: Any, ns: str, path: str, attribute: str | None = None) -> str | None:
    """The text (or ``attribute``) at ``path`` in the domain's metadata element of
    namespace ``ns``, if any."""
    try:
        root = safexml.parse(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, ns))
    except (libvirt.libvirtError, safexml.XMLRefused):
        return None
    node = root if path in ("", ".") else root.find(path)
    if node is None:
        return None
    text = node.get(attribute, "") if attribute else "".join(node.itertext())
    return text.strip() or None


def _key(handle: Any) -> tuple[str, int]:
    # A domain restarted under the same uuid has a new id: it is a new domain to us.
    return handle.UUIDString(), handle.ID()


def _warn_once(warned: set[str], key: str, fmt: str, *args: object) -> None:
    if key not in warned:
        warned.add(key)
        log.warning(fmt, *args)


@dataclass
class Devices:
    """A domain's disks and interfaces, as its XML describes them."""

    disks: list[tuple[str, str]]  # (target dev, source: file, device, name or volume)
    nics: list[str]  # interface target devs
    plain_sources: dict[str, str]  # target -> source file or device (collectd's "source")
    macs: dict[str, str | None]  # interfaces with a target, in order -> MAC address
    interfaces: list[tuple[str, bool]]  # every interface: (host device or "", is a tap)


def parse_devices(xml: str) -> Devices:
    """The disks and interfaces of a domain's XML (none when the XML is refused)."""
    found = Devices([], [], {}, {}, [])
    try:
        root = safexml.parse(xml)
    except safexml.XMLRefused:
        return found
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        dev, source = target.get("dev", ""), disk.find("source")
        src = ""
        if source is not None:
            src = next((source.get(a, "") for a in ("file", "dev", "name", "volume")
                        if source.get(a)), "")
            plain = source.get("dev") or source.get("file")  # collectd's order
            if plain:
                found.plain_sources[dev] = plain
        found.disks.append((dev, src))
    for nic in root.iterfind("./devices/interface"):
        target = nic.find("target")
        found.interfaces.append((target.get("dev", "") if target is not None else "",
                                 _is_tap(nic)))
        if target is None or not target.get("dev"):
            continue
        mac = nic.find("mac")
        found.nics.append(target.get("dev", ""))
        found.macs[target.get("dev", "")] = mac.get("address") if mac is not None else None
    return found


def _is_tap(nic: Any) -> bool:
    """Whether an interface of the live XML is a tap device in the host's namespace whose
    rx/tx libvirt swaps (its virDomainNetTypeSharesHostView is false): type ethernet or
    bridge, or a network that gave it a bridge. macvtap (direct) shares the host's view and
    vhost-user is read from Open vSwitch; those stay with libvirtd."""
    kind, source = nic.get("type"), nic.find("source")
    return kind in ("bridge", "ethernet") or (kind == "network" and source is not None
                                                and bool(source.get("bridge")))


class Inventory:
    """The running domains of one connection, with cached tags.

    Listing is two steps so that each can be held to a deadline that fits its work:
    ``listing()`` is one call; ``update()`` reads what is new or stale, one domain
    at a time, keeping its progress if it is abandoned half-way.
    """

    def __init__(self, conn: Any, refresh_interval: float, want_devices: bool,
                 label: tuple[str, str, str | None] | None = None, adopter: bool = False,
                 seed: Seed | None = None) -> None:
        self.conn = conn
        self.adopter = adopter  # warns about foreign tags (virt-0 samples those domains)
        self.label = label  # (namespace, path, attribute) of a metadata value, if wanted
        self.refresh_interval = refresh_interval
        self.want_devices = want_devices
        # uuid -> (tag, label) known to the supervisor: a respawned worker need not read
        # them again (they are re-read at the next refresh like any other).
        self.seed = dict(seed or {})
        self._known: dict[tuple[str, int], Domain] = {}
        self.listed = False  # a listing has returned on this inventory
        self._warned: set[str] = set()

    def running(self, own: Callable[[Domain], bool] = lambda _d: True) -> list[Domain]:
        """The active domains, tags read for new ones and re-read when stale."""
        handles = self.listing()
        return self.update(handles, self.to_read(handles, own), own)

    def listing(self) -> list[Any]:
        """Handles of the active domains: one call to libvirtd."""
        return list(self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))

    def to_read(self, handles: list[Any], own: Callable[[Domain], bool]) -> list[str]:
        """UUIDs of the listed domains that ``update`` must ask libvirtd about (its work)."""
        now = time.monotonic()
        work = []
        for handle in handles:
            dom = self._known.get(_key(handle))
            if (dom is None or now - dom.read_at >= self.refresh_interval
                    or (self.want_devices and dom.disks is None and own(dom))):
                work.append(handle.UUIDString())
        return work

    def update(self, handles: list[Any], work: list[str],
               own: Callable[[Domain], bool]) -> list[Domain]:
        """Read the domains in ``work`` (tags; devices of ``own`` ones); return them all."""
        now = time.monotonic()
        todo = set(work)
        current: dict[tuple[str, int], Domain] = {}
        for handle in handles:
            key = _key(handle)
            try:
                dom = self._known.get(key)
                if dom is not None:
                    dom.handle = handle  # of the connection that listed it (it may be new)
                if key[0] in todo:
                    if dom is None:
                        dom = self._new(handle, now)
                    elif now - dom.read_at >= self.refresh_interval:
                        self._reread(dom, handle, now)
                    if self.want_devices and dom.disks is None and own(dom):
                        devices = parse_devices(handle.XMLDesc(0))
                        dom.disks, dom.nics = devices.disks, devices.nics
                        dom.plain_sources, dom.macs = devices.plain_sources, devices.macs
                        dom.interfaces = devices.interfaces
                    self._known[key] = dom  # progress kept if this call is abandoned
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                continue  # it stopped between the listing and now: not worth a line
            if dom is not None:
                current[key] = dom
        self._known, self.listed = current, True
        self._warned &= {uuid for uuid, _id in current}  # warn again if it comes back
        return self.known()

    def known(self) -> list[Domain]:
        """The domains of the last listing that returned (kept while a listing hangs)."""
        return sorted(list(self._known.values()), key=lambda d: d.name)

    def known_or_seeded(self) -> list[Domain]:
        """``known()``; before any listing has returned (a worker respawned while a wedged
        lock holds every listing, or while libvirtd does not answer at all), the domains
        the supervisor last saw, without handles: the stats call looks each one up, under
        its own deadline, and the kernel reader finds their QEMUs and interfaces. The
        first listing that returns replaces them all."""
        if not self._known and not self.listed:
            for uuid, (name, tag, label, interfaces) in self.seed.items():
                dom = Domain(None, uuid, name, tag, -math.inf, label)
                dom.interfaces = None if interfaces is None else list(interfaces)
                self._known[(uuid, -1)] = dom
        return self.known()

    def _new(self, handle: Any, now: float) -> Domain:
        uuid = handle.UUIDString()
        if uuid in self.seed:
            _name, tag, label, _interfaces = self.seed.pop(uuid)
            dom = Domain(handle, uuid, handle.name(), tag, now, label)
        else:
            dom = Domain(handle, uuid, handle.name(), None, now)
            self._reread(dom, handle, now)
        return dom

    def _reread(self, dom: Domain, handle: Any, now: float) -> None:
        dom.tag = read_tag(handle, self._warned, self.adopter)
        if self.label:
            dom.label = read_label(handle, *self.label)
        dom.name = handle.name()
        dom.read_at = now
        if dom.disks is not None:  # devices too, where bulk stats do not name them
            dom.forget_devices()

    @staticmethod
    def unresponsive(dom: Domain, suspect: bool = False) -> bool:
        """True when libvirt reports the domain's monitor stuck (controlInfo).

        A monitor is briefly occupied by every normal query, so only one busy for
        STUCK_AFTER_MS counts, unless we already saw a call on it hang (``suspect``).
        """
        if dom.handle is None:
            return False  # never looked up: it went away before it could be
        try:
            state, _details, state_ms = dom.handle.controlInfo()
        except libvirt.libvirtError:
            return False
        if state == _CONTROL_ERROR:
            return True
        return bool(state == _CONTROL_OCCUPIED and (suspect or state_ms >= STUCK_AFTER_MS))
