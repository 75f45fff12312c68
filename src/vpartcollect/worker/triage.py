"""How each domain is asked this cycle, from what is known before any call.

- ``NORMAL``: every group, NOWAIT (the usual bulk call).
- ``FROZEN``: QEMU's main thread cannot serve the monitor (seen in /proc): only what
  libvirtd answers without QEMU (bulk state and interface; per-domain info, vcpus,
  getCPUStats), flagged unresponsive. Costs no libvirtd thread.
- ``NO_BLOCK``: its datastore does not answer: every group but block (which makes QEMU
  stat() the image and hang on it), flagged unresponsive.
- ``SPARE``: QEMU seems fine, but ``MAX_BLOCKED`` calls of ours are already blocked on
  QEMUs that froze (an outage freezing them one after another): only the FROZEN route's
  calls (no monitor, so none can hang on a QEMU that freezes meanwhile), not flagged.
  Loses the monitor-only values (block, balloon stats, disk capacity) until a blocked
  call returns.
- ``HOLD``: not asked at all, flagged unresponsive: a call on it alone has not
  returned, or it was in a call that hung, /proc cannot vouch for its QEMU and two
  domains of ours already have a call on them alone blocked. Asking again could leave
  one more blocked in libvirtd.

``route`` is the rule, pure. ``Triage`` gathers what it needs: each QEMU's main
thread (qemu_proc), each datastore's probe as QEMU sees it (datastores, mounts)
and the calls still blocked in libvirtd (guard).
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from vpartcollect.config import Config
from vpartcollect.health import HealthValue, health_values
from vpartcollect.mounts import Mount, read_mountinfo
from vpartcollect.worker.datastores import Image, Probes, Sizes, datastores, store_names
from vpartcollect.worker.guard import Guard
from vpartcollect.worker.inventory import Domain
from vpartcollect.worker.qemu_proc import IO_WAIT_SECONDS, QemuProcesses

log = logging.getLogger(__name__)

# Calls of ours a worker may leave blocked on QEMUs that froze: the one a freeze catches
# in flight (nobody can see that coming) and one more. Once this many are blocked, no call
# needing a QEMU's monitor is made: an outage freezing a partition's QEMUs one after
# another, each between its /proc check and its call, would cost a thread per VM. Calls
# blocked on libvirtd's own locks (a listing, a wedged domain whose QEMU runs) do not
# count: asking the partition-mates cannot catch them on that lock (the culprit rule
# holds the wedged domain), and a stopped libvirtd stops every ask anyway (Session.down).
MAX_BLOCKED = 2
PROBE_SECONDS = 1.0  # a datastore slower than this to stat() one image counts as dead


class Route(enum.Enum):
    """The ways a domain can be sampled (see the module docstring)."""

    NORMAL = "normal"
    FROZEN = "frozen"
    NO_BLOCK = "no-block"
    SPARE = "spare"
    HOLD = "hold"


def route(*, frozen: bool, stalled: bool, seen: bool, in_hung_call: bool,
          alone_in_hung_call: bool, culprits: int, blocked: int = 0) -> Route:
    """Route one domain.

    ``frozen``: its QEMU main thread is stopped or waiting on storage (two reads
    agree); ``stalled``: a datastore of its disks does not answer; ``seen``: its QEMU
    process was found, so /proc can vouch for it; ``in_hung_call``: it is one of the
    domains of a call that is still blocked in libvirtd; ``alone_in_hung_call``: it is
    the only domain of such a call; ``culprits``: how many domains are alone in such a
    call (each a known culprit, each holding one libvirtd thread); ``blocked``: how many
    calls of this worker are still blocked on a QEMU monitor that /proc, looked at after
    the call hung, found frozen (``Guard.caught_by``).

    Without /proc a member of a hung chunk may be stuck too, and asking it can hold one
    thread more; it is asked while at most one culprit is known: one wedged domain then
    costs its partition-mates nothing, and domains stuck by the dozen (a datastore
    outage) cost the chunk's call and two culprits' calls, never one per domain.

    With /proc, a QEMU that freezes after its look and before its call hangs that call
    too; so once ``MAX_BLOCKED`` calls are blocked on frozen QEMUs (an outage reaching
    them in turn), nothing needing a monitor is asked.
    """
    if frozen:
        # The calls of this route need the domain's object lock, never its monitor job:
        # a frozen QEMU's earlier hung call holds only the job.
        return Route.FROZEN
    if alone_in_hung_call or (in_hung_call and not seen and culprits > 1):
        return Route.HOLD
    if blocked >= MAX_BLOCKED:
        # Frozen or not, this costs no thread; a dead datastore's domain is unresponsive.
        return Route.FROZEN if stalled else Route.SPARE
    if stalled:
        return Route.NO_BLOCK
    return Route.NORMAL


class Triage:
    """What one worker knows about its domains' QEMUs and datastores, between calls."""

    def __init__(self, cfg: Config, proc: Path = Path("/proc"),
                 qemu: QemuProcesses | None = None, probes: Probes | None = None) -> None:
        self.proc = proc
        self.refresh = cfg.refresh_interval
        # Confirming a frozen QEMU never takes longer than a call may.
        self.qemu = qemu or QemuProcesses(longest=min(IO_WAIT_SECONDS, cfg.call_timeout))
        self.probes = probes or Probes(min(PROBE_SECONDS, cfg.call_timeout / 2))
        self._views: dict[str, tuple[float, list[Mount]]] = {}  # mount namespace -> mounts
        self.holding: dict[str, str] = {}  # uuid -> name held back (logged once an episode)
        self.sparing = False  # healthy domains asked without the monitor (logged once)
        self.store_names: dict[str, str] = {}  # datastore key -> its name in the metrics

    def __repr__(self) -> str:
        return (f"<Triage {len(self._views)} mount view(s), {len(self.probes.dead())} dead "
                f"store(s), holding {len(self.holding)}>")

    @property
    def sizes(self) -> Sizes:
        """Image path -> (size, space taken), as the latest probes read them."""
        return self.probes.sizes

    # -- before the calls of a cycle --------------------------------------
    def start(self, domains: Sequence[Domain]) -> None:
        """Off the sampling path: probe the datastores of ``domains`` while the listing
        and /proc checks run (their mounts re-read every refresh interval)."""
        self.qemu.forget_except(d.uuid for d in domains)
        if self._stale_views():
            for d in domains:
                d.stores = None
        self.probes.start(self.images(domains))

    def routes(self, domains: Sequence[Domain], guard: Guard,
               frozen: set[str] | None = None) -> dict[Route, list[Domain]]:
        """Route every domain from /proc (``frozen``, when it was just looked at), the
        datastore probes and the calls still blocked in libvirtd."""
        if frozen is None:
            frozen = self.frozen(domains)
        self.probes.settle()
        dead = self.probes.dead()
        in_call, alone = guard.involving()
        # qemu.why: the QEMUs frozen at their last look (each hung call's domains are
        # looked at again at once: Cycle._after_hang).
        blocked = guard.caught_by(self.qemu.why)
        routes: dict[Route, list[Domain]] = {r: [] for r in Route}
        for d in domains:
            r = route(frozen=d.uuid in frozen, stalled=bool(dead & self.stores(d).keys()),
                      seen=self.qemu.pid(d.uuid, d.name) is not None,
                      in_hung_call=d.uuid in in_call, alone_in_hung_call=d.uuid in alone,
                      culprits=len(alone), blocked=blocked)
            routes[r].append(d)
        return routes

    def note_held(self, held: Sequence[Domain], blocked: int) -> None:
        """Log, once per episode, which domains are held back and which are asked again."""
        now = {d.uuid: d.name for d in held}
        for uuid, name in now.items():
            if uuid not in self.holding:
                log.warning("%s: held back: a call of ours involving it is still blocked in "
                            "libvirtd (%d in all); not asked until that returns", name, blocked)
        for uuid in self.holding.keys() - now.keys():
            log.info("%s: asked again: no call of ours on it is blocked any more",
                     self.holding[uuid])
        self.holding = now

    def note_spared(self, spared: Sequence[Domain], blocked: int) -> None:
        """Log when healthy domains start and stop being asked only what needs no monitor
        (calls of ours blocked on frozen QEMUs reached the cap): once an episode."""
        if spared and not self.sparing:
            log.warning("%d domain(s) asked only what needs no monitor (no block stats, "
                        "balloon or disk capacity): %d call(s) of ours blocked on frozen "
                        "QEMUs, at most %d; until one returns", len(spared), blocked,
                        MAX_BLOCKED)
        elif not spared and self.sparing and blocked < MAX_BLOCKED:
            log.info("domains asked for everything again: a call blocked on a frozen QEMU "
                     "returned")
        if spared or blocked < MAX_BLOCKED:
            self.sparing = bool(spared)

    def frozen(self, domains: Iterable[Domain]) -> set[str]:
        """Uuids of the domains whose QEMU is frozen now (qemu_proc's judgement)."""
        return self.qemu.frozen((d.uuid, d.name) for d in domains)

    def recheck(self, domains: Sequence[Domain]) -> set[str]:
        """After a call on ``domains`` hung: probe their datastores again (one that died
        since this cycle's probe hangs each QEMU asked for block info next) and watch
        their QEMUs once, all together; return the frozen ones."""
        self.probes.recheck(self.images(domains))
        return self.frozen(domains)

    # -- datastores as QEMU sees them ---------------------------------------
    def images(self, domains: Iterable[Domain]) -> dict[str, list[Image]]:
        """{datastore: its images} over ``domains``."""
        out: dict[str, list[Image]] = {}
        for d in domains:
            for store, images in self.stores(d).items():
                out.setdefault(store, []).extend(images)
        return out

    def stores(self, dom: Domain) -> dict[str, list[Image]]:
        """The datastores of one domain's images, worked out once per device change."""
        if dom.disks is None:
            return {}  # not read yet: nothing known to probe
        if dom.stores is None:
            pid = self.qemu.pid(dom.uuid, dom.name)
            mounts, root = self._view(pid)
            dom.stores = datastores((src for _, src in dom.disks), mounts, root)
            # The first name a store got stays: one device seen through two mounts (by
            # two domains) must not switch its series' name with the order of triage.
            for store, name in store_names(dom.stores, mounts).items():
                self.store_names.setdefault(store, name)
        return dom.stores

    def health(self, domains: Iterable[Domain],
               calls: dict[str, list[float]]) -> list[HealthValue]:
        """What this tick saw of the host (health.py): the datastores probed, why each of
        ``domains``' QEMUs found frozen is, and ``calls``' answer times by kind."""
        stores: dict[str, tuple[bool, float]] = {}
        for store, (answering, silent) in self.probes.health().items():
            name = self.store_names.get(store, store)
            # One export mounted twice is one datastore: the worse of the two says it.
            was = stores.get(name, (True, 0.0))
            stores[name] = (answering and was[0], max(silent, was[1]))
        why = self.qemu.why
        frozen = [why[u] for d in domains if (u := d.uuid.lower()) in why]
        return health_values(stores, frozen, calls)

    def _view(self, pid: int | None) -> tuple[list[Mount], str]:
        """(mounts, path prefix) of QEMU's mount namespace, or of ours without its pid."""
        where = f"{self.proc}/{pid}" if pid is not None else f"{self.proc}/self"
        try:
            namespace = os.readlink(f"{where}/ns/mnt")
        except OSError:  # not root: QEMU's view is out of reach, ours is what we have
            where, namespace = f"{self.proc}/self", "self"
        cached = self._views.get(namespace)
        if cached is None:
            cached = self._views[namespace] = (time.monotonic(), _read_mountinfo(where))
        root = f"{where}/root" if where != f"{self.proc}/self" else ""
        return cached[1], root

    def _stale_views(self) -> bool:
        """Re-read the mount views older than the refresh interval; True if any changed."""
        now = time.monotonic()
        stale = [ns for ns, (read_at, _) in self._views.items() if now - read_at >= self.refresh]
        for namespace in stale:
            del self._views[namespace]  # read again when next needed
        return bool(stale)


def _read_mountinfo(where: str) -> list[Mount]:
    try:
        with open(f"{where}/mountinfo", encoding="utf-8", errors="replace") as fh:
            return read_mountinfo(fh.read())
    except OSError:
        return []
