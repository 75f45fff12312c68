"""One read-only libvirt connection of a worker, every call on it held to a deadline.

A Session is built connected (``Session.open`` retries until libvirtd answers),
so its connection, stats reader and inventory are never missing; but a respawned
worker's while libvirtd does not answer (``Session.resume``): it samples its
predecessor's domains from the kernel until the connection opens. ``call`` is
the only way a worker talks to libvirt: announce (Busy), run under the guard's
deadline, and when the call is abandoned, leave the connection to it and go on
with a new one (libvirt's client can stall other calls on a connection that has
a call stuck in it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import libvirt

from vpartcollect import wire
from vpartcollect.backoff import backoff
from vpartcollect.calls import CallKind
from vpartcollect.collectd_values import needed_groups
from vpartcollect.config import Config
from vpartcollect.daemon import few
from vpartcollect.libvirt_conn import error_text, open_readonly
from vpartcollect.roster import Seed
from vpartcollect.watchdog import call_deadline
from vpartcollect.worker.extras import PER_DOMAIN
from vpartcollect.worker.guard import Abandoned, Call, Guard
from vpartcollect.worker.inventory import Domain, Inventory
from vpartcollect.worker.kernel_reader import KernelReader, why_not
from vpartcollect.worker.libvirt_stats import StatsReader, probe_bulk_groups
from vpartcollect.worker.link import Link

log = logging.getLogger(__name__)
_SAID: set[str] = set()  # why the kernel reader is off, said once a process

RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0  # libvirtd back from a restart is found within seconds


def reconnect_cap(interval: float) -> float:
    """The longest wait between two tries to connect: RECONNECT_MAX, or one interval when
    shorter, so a libvirtd back from a restart is asked again within two ticks. One try
    at a time per worker, and a refused one costs libvirtd nothing (no process listens)."""
    return max(RECONNECT_MIN, min(RECONNECT_MAX, interval))


T = TypeVar("T")


# What the Prometheus endpoint's families read (Debian's exporter's and inovex's).
PROMETHEUS_GROUPS = frozenset({"state", "cpu-total", "balloon", "vcpu", "interface", "block"})


class Session:
    """A worker's connection to libvirt, with what hangs off it (reader, inventory)."""

    def __init__(self, index: int, cfg: Config, link: Link, guard: Guard, conn: Any,
                 bulk: Sequence[str], fallback: Sequence[str], seed: Seed,
                 kernel: KernelReader | None = None) -> None:
        self.index = index
        self.cfg = cfg
        self.link = link
        self.guard = guard
        self.conn = conn
        selection = cfg.selection()
        groups = needed_groups(selection)
        if cfg.prometheus is not None:  # the exporter's families need every group
            groups |= PROMETHEUS_GROUPS
        # conn is None in a resumed session until its connection opens (``resume``).
        self.reader = StatsReader(conn, bulk, fallback, groups,
                                  selection.extra & frozenset(PER_DOMAIN), kernel)
        # A connection being opened in the background after the last one was left to a
        # stuck call: until it opens, libvirtd is not answering and nothing is asked.
        self.connecting: Call[Any] | None = None
        self.lost = False  # no connection to go on with: the worker opens a new session
        # Disks always: their datastores are probed before block stats are asked.
        self.inventory = Inventory(conn, cfg.refresh_interval, True, cfg.label_spec(),
                                   adopter=index == 0, seed=seed)
        # Connections left to a call stuck in them, closed once it returns.
        self.parked: list[Any] = []
        # Wall time libvirtd answered again after Session.open had to wait for it (0: at
        # the first try): a tick whose interval ended before then had nothing read of it.
        self.back_at = 0.0
        # Seconds each call took since the last tick's end, by kind (health.py's
        # libvirtd_seconds): a call abandoned at its deadline counts what it was waited.
        self.call_seconds: dict[str, list[float]] = {}

    def __repr__(self) -> str:
        return (f"<Session {self.cfg.connect} {len(self.inventory.known())} domain(s), "
                f"{len(self.guard.outstanding())} call(s) left in libvirtd, "
                f"{len(self.parked)} parked connection(s)>")

    @classmethod
    def open(cls, index: int, cfg: Config, link: Link, guard: Guard, seed: Seed,
             parked: Sequence[Any] = (), kernel: KernelReader | None = None,
             opened: Any = None) -> Session:
        """Connect read-only, retrying with capped backoff (each try announced); then say
        hello. ``parked``: connections a previous session left to stuck calls;
        ``kernel``: the worker's kernel reader, used if this connection allows it;
        ``opened``: a connection already open, for the first try."""
        failures, last_error, cap = 0, "", reconnect_cap(cfg.interval)
        while True:
            link.busy(CallKind.CONNECT, [])
            try:
                conn, opened = opened or open_readonly(cfg.connect), None
                bulk, fallback = probe_bulk_groups(conn)
                ncpus, driver = int(conn.getInfo()[2]), conn.getType()
                break
            except libvirt.libvirtError as exc:
                message = error_text(exc)
                if message != last_error:
                    log.warning("cannot connect to %s: %s (retrying every %.1f s at most)",
                                cfg.connect, message, cap)
                    last_error = message
                link.idle("connect failed")
                time.sleep(backoff(failures, RECONNECT_MIN, cap))
                failures += 1
        if last_error:
            log.warning("connected to %s again", cfg.connect)
        off = why_not(cfg.kernel_reader, os.geteuid(), driver, cfg.connect)
        if off and kernel is not None and off not in _SAID:
            _SAID.add(off)
            log.info("counters from libvirtd only: %s", off)
        session = cls(index, cfg, link, guard, conn, bulk, fallback, seed,
                      None if off else kernel)
        session.parked = list(parked)
        session.back_at = time.time() if failures else 0.0
        link.hello(index, ncpus, driver, bulk, fallback)
        return session

    @classmethod
    def resume(cls, index: int, cfg: Config, link: Link, guard: Guard, seed: Seed,
               kernel: KernelReader, before: wire.Hello) -> Session:
        """A respawned worker's start: ``open``, unless libvirtd opens no connection within
        a call's timeout (stopped, wedged, restarting). Then it starts as its predecessor
        was (``before``: its hello) from the supervisor's roster, its domains' counters
        from the kernel, while the connection opens in the background; the first listing
        that returns replaces the roster (``own_domains``). No kernel reader on this
        connection (its driver, not root...): ``open``, waiting for libvirtd."""
        if why_not(cfg.kernel_reader, os.geteuid(), before.driver, cfg.connect):
            return cls.open(index, cfg, link, guard, seed, kernel=kernel)
        link.busy(CallKind.CONNECT, [])
        connecting: Call[Any] | None = None
        try:
            conn = guard.run(CallKind.CONNECT, [], cfg.call_timeout,
                             lambda: open_readonly(cfg.connect))
            return cls.open(index, cfg, link, guard, seed, kernel=kernel, opened=conn)
        except Abandoned as exc:
            connecting = exc.call  # used once it opens (``down``)
            why = "does not answer"
        except libvirt.libvirtError as exc:
            why = f"refuses connections ({error_text(exc)})"
        session = cls(index, cfg, link, guard, None, before.bulk_groups,
                      before.fallback_groups, seed, kernel)
        if connecting is None:
            session._open_in_background()
        else:
            session.connecting = connecting
        log.warning("libvirtd %s: counters from the kernel only until it does, for the "
                    "domains the last worker of this instance sampled", why)
        link.hello(index, before.ncpus, before.driver, before.bulk_groups,
                   before.fallback_groups)
        return session

    def alive(self) -> bool:
        """Whether the connection still reaches libvirtd."""
        if self.lost or self.conn is None:  # None: a resumed session, not connected yet
            return False
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    # -- calls --------------------------------------------------------------
    def call(self, kind: CallKind, domains: Sequence[Domain] | Sequence[str],
             fn: Callable[[], T]) -> T:
        """Announce a call over ``domains`` (or their uuids) that may block, then run it
        under its deadline; Abandoned when it outlives it (the connection is parked)."""
        uuids = [d if isinstance(d, str) else d.uuid for d in domains]
        self.link.busy(kind, uuids)
        started, timed = time.monotonic(), False
        try:
            return self.guard.run(kind, uuids, call_deadline(self.cfg.call_timeout, len(uuids),
                                                             kind), fn, conn=self.conn)
        except Abandoned:
            self._took(kind, time.monotonic() - started)
            timed = True  # the new connection's opening is not this call's answer time
            self._park()
            raise
        finally:
            if not timed:
                self._took(kind, time.monotonic() - started)

    def _took(self, kind: CallKind, seconds: float) -> None:
        self.call_seconds.setdefault(kind.value, []).append(seconds)

    def took_since_last(self) -> dict[str, list[float]]:
        """The seconds each call took since the last time this was asked, by kind."""
        out, self.call_seconds = self.call_seconds, {}
        return out

    def _park(self) -> None:
        """Leave the current connection to the call stuck in it; go on with a new one.

        Measured on libvirt 9.0: while a call is stuck on a connection, a third of the
        getCPUStats and vcpus calls made on the same connection stall in the client
        library (libvirtd is not even asked), though a second connection answers every
        one at once. Domain handles follow lazily (StatsReader looks them up again).
        """
        self.parked.append(self.conn)
        self._reconnect()

    def _reconnect(self) -> None:
        """Open a new connection, waiting for it no longer than a call may take; after
        that it goes on opening in the background and nothing is asked until it is open
        (``down``). A refused connection is handled as a lost one (libvirtError)."""
        self.link.busy(CallKind.CONNECT, [])
        try:
            conn = self.guard.run(CallKind.CONNECT, [], self.cfg.call_timeout,
                                  lambda: open_readonly(self.cfg.connect))
        except Abandoned as exc:
            self.connecting = exc.call
            log.warning("libvirtd does not open a connection within %.1f s: counters from the "
                        "kernel only, nothing asked of libvirtd until it does",
                        self.cfg.call_timeout)
            return
        self._use(conn)

    def _use(self, conn: Any) -> None:
        """Go on with ``conn``, a new connection: a session found lost before is not now."""
        self.conn = self.reader.conn = self.inventory.conn = conn
        self.lost = False

    def reopen_later(self) -> None:
        """The connection is lost (libvirtd restarting): open a new one in the background,
        retrying with capped backoff, while the kernel's counters keep coming."""
        if self.conn is not None:
            self.parked.append(self.conn)  # closed once nothing runs on it
        self._open_in_background()
        log.warning("counters from the kernel only until libvirtd is back")

    def _open_in_background(self) -> None:
        call: Call[Any] = Call(CallKind.CONNECT, [])
        threading.Thread(target=call.run, args=(self._open_retrying,),
                         name="libvirt-reconnect", daemon=True).start()
        self.connecting = call

    def _open_retrying(self) -> Any:
        failures, cap = 0, reconnect_cap(self.cfg.interval)
        while True:
            try:
                return open_readonly(self.cfg.connect)
            except libvirt.libvirtError:
                time.sleep(backoff(failures, RECONNECT_MIN, cap))
                failures += 1

    def down(self) -> bool:
        """Whether libvirtd is not answering: a new connection is still opening. Once it
        is open, it is used and libvirtd is asked again."""
        call = self.connecting
        if call is None:
            return False
        if not call.done.is_set():
            return True
        self.connecting = None
        try:
            conn = call.value()
        except libvirt.libvirtError:
            try:
                self._reconnect()  # opened too late to be used, or refused: once more now
            except libvirt.libvirtError:
                self.lost = True  # the worker connects afresh (Session.open)
                raise
            return self.connecting is not None
        log.warning("libvirtd answers again after %.1f s", call.finished - call.started)
        self._use(conn)
        return False

    def tidy(self, names: dict[str, str]) -> None:
        """Between ticks: log the abandoned calls that returned (their libvirtd thread is
        free again; what they returned is not used) and close the connections they held."""
        for call in self.guard.returned():
            who = few(sorted(names.get(u, u) for u in call.uuids))
            log.info("%s%s returned after %.1f s: its libvirtd thread is free again",
                     call.kind.value, f" of {who}" if who else "", call.finished - call.started)
        for conn in [c for c in self.parked if not self.guard.in_use(c)]:
            self.parked.remove(conn)
            with contextlib.suppress(libvirt.libvirtError, Abandoned):
                # A close needs libvirtd; should it hang, it is counted like any call.
                self.guard.run(CallKind.CLOSE, [], self.cfg.call_timeout, conn.close, conn=conn)

    # -- which domains --------------------------------------------------------
    def own_domains(self, skip: set[str]) -> list[Domain]:
        """This instance's running domains (partition rule and include/exclude), minus
        ``skip``.

        Listing is one call; reading what is new or stale (tags, devices of our own
        domains) is a second, whose deadline grows with the number of domains to read.
        While either hangs in libvirtd (a wedged domain lock blocks both), the domains
        already known are sampled with their cached handles and no second one is sent.
        """
        inventory = self.inventory
        if self.guard.busy_with(CallKind.LIST, CallKind.DESCRIBE) or self.down():
            # A worker respawned meanwhile has listed nothing: its predecessor's domains.
            domains = inventory.known_or_seeded()
        else:
            try:
                handles = self.call(CallKind.LIST, [], inventory.listing)
                work = inventory.to_read(handles, self.owns)
                if work:
                    domains = self.call(CallKind.DESCRIBE, work,
                                        lambda: inventory.update(handles, work, self.owns))
                else:
                    domains = inventory.update(handles, [], self.owns)
            except Abandoned as exc:
                log.warning("%s outlived its deadline; sampling the %d known domains until it "
                            "returns", "listing domains" if exc.call.kind is CallKind.LIST
                            else f"reading {len(exc.call.uuids)} new domain(s)",
                            len(inventory.known_or_seeded()))
                domains = inventory.known_or_seeded()
        return [d for d in domains if self.owns(d) and d.uuid not in skip]

    def owns(self, dom: Domain) -> bool:
        """Whether this instance samples ``dom``."""
        owner = self.cfg.sampled_by(dom.name, dom.tag)
        return owner is not None and owner.instance == self.index
