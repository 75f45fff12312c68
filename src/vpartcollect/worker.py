"""One instance's life, in a forked child: connect, wait for ticks, sample, send.

A worker is thin on purpose: it talks to libvirt and sends raw results; the
supervisor owns naming, rates and outputs, so nothing is lost when it kills a
worker stuck in a call. Before every call that may block, the worker announces
it (Busy) so the supervisor can hold it to a deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import libvirt

from vpartcollect import wire
from vpartcollect.autotag import Mount, read_mounts
from vpartcollect.backoff import backoff
from vpartcollect.config import Config
from vpartcollect.daemon import OneLineFormatter
from vpartcollect.datastores import Probes, datastores
from vpartcollect.guard import Abandoned, Guard
from vpartcollect.inventory import Domain, Inventory
from vpartcollect.libvirt_stats import (
    StatsReader,
    as_block_info,
    monitor_answered,
    monitor_skipped,
    open_readonly,
    probe_bulk_groups,
    quiet_libvirt,
)
from vpartcollect.partition import instance_name
from vpartcollect.qemu_proc import IO_WAIT_SECONDS, QemuProcesses
from vpartcollect.triage import Route, route
from vpartcollect.watchdog import call_deadline

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
RECONNECT_MIN = 0.5
RECONNECT_MAX = 10.0  # libvirtd back from a restart is found within seconds
PROBE_SECONDS = 1.0  # a datastore slower than this to stat() one image counts as dead
# A domain held back no longer than this many intervals (its call was slow, not hung)
# is sampled late for the ticks it missed; one held longer just has a gap.
REPLAY_INTERVALS = 2
# A NOWAIT answer without the monitor's part, from a domain routed as healthy: most often
# another call held its job for a moment, another client's or one of ours that hung on a
# frozen partition-mate and went on to the next domains at the thaw (measured: 3 of 16
# thaws cost a mate its block stats). Such a domain is asked once more, this long after,
# at the end of the cycle, and only the better of its two answers is sent.
ASK_AGAIN_AFTER = 0.05
T = TypeVar("T")


def chunks(items: Sequence[Domain], size: int) -> Iterator[Sequence[Domain]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def few(names: Sequence[str], most: int = 5) -> str:
    """Names for a log line: the first ``most``, then how many more."""
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


def clean_stats(raw: dict[str, Any]) -> wire.Stats:
    """Keep only wire-safe values: bools become 0/1, other types are dropped."""
    out: wire.Stats = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, int | float | str):
            out[key] = value
    return out


@dataclass
class Partial:
    """A chunk's domains whose NOWAIT answer lacked the monitor's part (not sent yet)."""

    ts: float
    domains: list[Domain]
    raw: dict[str, wire.Stats]
    stuck: set[str]
    sampled: float
    at: float  # monotonic time of the answer


class LostConnection(Exception):
    """libvirtd went away under the worker."""


class Worker:
    """The child side of one ``virt-N`` instance."""

    def __init__(self, index: int, cfg: Config, ctl_fd: int, out_fd: int,
                 seed: dict[str, tuple[str | None, str | None]] | None = None) -> None:
        self.index = index
        self.seed = seed or {}
        self.cfg = cfg
        self.ctl_fd = ctl_fd
        self.out_fd = out_fd
        self.decoder = wire.FrameDecoder()
        self.conn: Any = None
        # Connections left to a call stuck in them, closed once it returns: on a
        # connection with a stuck call, libvirt's client can stall other calls.
        self.parked: list[Any] = []
        self.inventory: Inventory | None = None
        self.reader: StatsReader | None = None
        self.guard = Guard()
        # Confirming a frozen QEMU never takes longer than a call may.
        self.qemu = QemuProcesses(longest=min(IO_WAIT_SECONDS, cfg.call_timeout))
        self.probes = Probes(min(PROBE_SECONDS, cfg.call_timeout / 2))
        self.mounts: list[Mount] = []
        self.mounts_read = -math.inf
        self.last_domains: list[Domain] = []
        self.names: dict[str, str] = {}
        self.holding: set[str] = set()  # domains held back (logged once per episode)
        # uuid -> ticks it only got a flag for, held back behind a call of ours that was
        # merely slow: asked for them, late, once it is asked again (REPLAY_INTERVALS).
        self.held_ticks: dict[str, list[float]] = {}
        # Answers that lacked the monitor's part, asked again at the end of the cycle.
        self.partial: list[Partial] = []

    # -- plumbing -------------------------------------------------------
    def send(self, msg: wire.Message) -> None:
        """Write one frame to the supervisor (blocking: it always reads)."""
        data = memoryview(wire.encode(msg))
        while data:
            data = data[os.write(self.out_fd, data) :]

    def next_tick(self) -> wire.Tick | None:
        """Block until the supervisor sends a tick; None when it closed the pipe."""
        while True:
            # The supervisor sends a tick only to an idle worker: one at a time.
            data = os.read(self.ctl_fd, 65536)
            if not data:
                return None
            for msg in self.decoder.feed(data):
                if isinstance(msg, wire.Tick):
                    return msg

    # -- libvirt --------------------------------------------------------
    def connect(self) -> None:
        """Open a read-only connection, retrying with capped backoff; announce each try."""
        failures = 0
        last_error = ""
        while True:
            self.send(wire.Busy("connect", []))
            try:
                conn = open_readonly(self.cfg.connect)
                bulk, fallback = probe_bulk_groups(conn)
                break
            except libvirt.libvirtError as exc:
                message = str(exc.get_error_message() or exc)
                if message != last_error:
                    log.warning("cannot connect to %s: %s (retrying every %.0f s at most)",
                                self.cfg.connect, message, RECONNECT_MAX)
                    last_error = message
                self.send(wire.Idle("connect failed"))
                time.sleep(backoff(failures, RECONNECT_MIN, RECONNECT_MAX))
                failures += 1
        if last_error:
            log.warning("connected to %s again", self.cfg.connect)
        self.conn = conn
        self.reader = StatsReader(conn, bulk, fallback)
        label = None
        if "metadata" in self.cfg.hostname_format:
            label = (self.cfg.hostname_metadata_ns, self.cfg.hostname_metadata_path)
        # Disks always: their datastores are probed before block stats are asked.
        self.inventory = Inventory(conn, self.cfg.refresh_interval, True, label,
                                   adopter=self.index == 0, seed=self.seed)
        ncpus = int(conn.getInfo()[2])
        self.send(wire.Hello(self.index, os.getpid(), ncpus, conn.getType(), bulk, fallback))

    def _alive(self) -> bool:
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    # -- one tick -------------------------------------------------------
    def _call(self, what: str, domains: Sequence[Domain] | Sequence[str],
              fn: Callable[[], T]) -> T:
        """Announce a call that may block (over ``domains``, or their uuids), then run it
        under its deadline (or Abandoned)."""
        uuids = [d if isinstance(d, str) else d.uuid for d in domains]
        self.send(wire.Busy(what, uuids))
        try:
            return self.guard.run(what, uuids,
                                  call_deadline(self.cfg.call_timeout, len(uuids), what), fn,
                                  conn=self.conn)
        except Abandoned:
            self._park()
            raise

    def _park(self) -> None:
        """Leave the current connection to the call stuck in it; go on with a new one.

        Measured on libvirt 9.0: while a call is stuck on a connection, a third of the
        getCPUStats and vcpus calls made on the same connection stall in the client
        library (libvirtd is not even asked), though a second connection answers every
        one at once. Domain handles follow lazily (StatsReader looks them up again).
        """
        assert self.reader is not None and self.inventory is not None
        self.send(wire.Busy("connect", []))
        conn = open_readonly(self.cfg.connect)  # a failure is handled as a lost connection
        self.parked.append(self.conn)
        self.conn = self.reader.conn = self.inventory.conn = conn

    def _close_parked(self) -> None:
        """Close the parked connections whose stuck calls have all returned."""
        for conn in [c for c in self.parked if not self.guard.in_use(c)]:
            self.parked.remove(conn)
            with contextlib.suppress(libvirt.libvirtError, Abandoned):
                # A close needs libvirtd; should it hang, it is counted like any call.
                self.guard.run("close", [], self.cfg.call_timeout, conn.close, conn=conn)

    def mine(self, skip: set[str]) -> list[Domain]:
        """This instance's domains (partition rule and include/exclude), minus ``skip``.

        Listing is one call; reading what is new or stale (tags, devices of our own
        domains) is a second, whose deadline grows with the number of domains to read.
        While either hangs in libvirtd (a wedged domain lock blocks both), the domains
        already known are sampled with their cached handles and no second one is sent.
        """
        assert self.inventory is not None
        inventory = self.inventory
        domains = inventory.known()
        if not (self.guard.busy_with("list") or self.guard.busy_with("describe")):
            try:
                handles = self._call("list", [], inventory.listing)
                work = inventory.to_read(handles, self._owns)
                if work:
                    domains = self._call("describe", work,
                                         lambda: inventory.update(handles, work, self._owns))
                else:
                    domains = inventory.update(handles, [], self._owns)
            except Abandoned as exc:
                log.warning("%s outlived its deadline; sampling the %d known domains until it "
                            "returns", "listing domains" if exc.call.what == "list"
                            else f"reading {len(exc.call.uuids)} new domain(s)",
                            len(inventory.known()))
                domains = inventory.known()
        self.qemu.forget_except(d.uuid for d in domains)
        return [d for d in domains if self._owns(d) and d.uuid not in skip]

    def _owns(self, dom: Domain) -> bool:
        owner = self.cfg.sampled_by(dom.name, dom.tag)
        return owner is not None and owner.instance == self.index

    def _stores(self, dom: Domain) -> dict[str, list[str]]:
        if dom.disks is None:
            return {}  # not read yet: nothing known to probe
        if dom.stores is None:
            dom.stores = datastores((src for _, src in dom.disks), self.mounts)
        return dom.stores

    def _images(self, domains: Sequence[Domain]) -> dict[str, list[str]]:
        """{datastore: its images} over ``domains``."""
        images: dict[str, list[str]] = {}
        for d in domains:
            for store, paths in self._stores(d).items():
                images.setdefault(store, []).extend(paths)
        return images

    def _refresh_mounts(self) -> None:
        if time.monotonic() - self.mounts_read < self.cfg.refresh_interval:
            return
        self.mounts_read = time.monotonic()
        try:
            mounts = read_mounts(Path("/proc/self/mounts").read_text())
        except OSError:
            mounts = []
        if mounts != self.mounts:
            self.mounts = mounts
            for dom in self.last_domains:
                dom.stores = None

    def triage(self, domains: Sequence[Domain],
               frozen: set[str] | None = None) -> dict[Route, list[Domain]]:
        """Route every domain (see triage.py) from /proc (``frozen``, when it was just
        looked at), the datastore probes and the calls still blocked in libvirtd."""
        if frozen is None:
            frozen = self.qemu.frozen((d.uuid, d.name) for d in domains)
        self.probes.settle()
        dead = self.probes.dead()
        # A hung listing or tag read involves no domain's monitor: it holds none back.
        in_call, alone = self.guard.involving(("stats", "frozen"))
        blocked = len(self.guard.outstanding())
        routes: dict[Route, list[Domain]] = {r: [] for r in Route}
        for d in domains:
            r = route(frozen=d.uuid in frozen, stalled=bool(dead & self._stores(d).keys()),
                      seen=self.qemu.pid(d.uuid, d.name) is not None,
                      in_hung_call=d.uuid in in_call, alone_in_hung_call=d.uuid in alone,
                      blocked=blocked)
            routes[r].append(d)
        for d in routes[Route.HOLD]:
            if d.uuid not in self.holding:
                log.warning("%s: held back: a call of ours involving it is still blocked in "
                            "libvirtd (%d in all); not asked until that returns", d.name,
                            blocked)
                self.holding.add(d.uuid)
        return routes

    def sample(self, tick: wire.Tick) -> None:
        """Collect and send every chunk of this tick, then Done."""
        started = time.monotonic()
        for p in self.partial:  # left by a tick that failed half-way: send as they were
            self._send_stats(p.ts, p.domains, (p.raw, p.stuck), p.sampled)
        self.partial = []
        for call, took in self.guard.returned():
            names = few(sorted(self.names.get(u, u) for u in call.uuids))
            log.info("%s%s returned after %.1f s: its libvirtd thread is free again",
                     call.what, f" of {names}" if names else "", took)
            if call.late is not None and not call.failed:
                call.late(call.value())
        self._close_parked()
        self._refresh_mounts()
        # Off the sampling path: the probes run while the listing and /proc checks do.
        self.probes.start(self._images(self.last_domains))
        domains = self.mine(set(tick.skip))
        self.last_domains = domains
        self.names = {d.uuid: d.name for d in domains}
        routes = self.triage(domains)
        held = {d.uuid for d in routes[Route.HOLD]}
        for uuid in self.holding - held:
            log.info("%s: asked again: no call of ours on it is blocked any more",
                     self.names.get(uuid, uuid))
        self.holding &= held
        suspects = set(tick.suspects)
        # While a call of ours is blocked in libvirtd, one domain per call: a second hang
        # then names its culprit instead of taking a whole chunk with it.
        size = 1 if self.guard.outstanding() else self.cfg.chunk_size
        self._replay_held(tick.ts, routes[Route.NORMAL], suspects)
        for chunk in chunks(routes[Route.NORMAL], size):
            self._stats(tick.ts, chunk, suspects)
        for rt in (Route.FROZEN, Route.NO_BLOCK):
            for chunk in chunks(routes[rt], self.cfg.chunk_size):
                self._careful(tick.ts, chunk, rt)
        self._ask_partial_again()
        self._flag_only(tick.ts, routes[Route.HOLD])
        for d in routes[Route.HOLD]:
            self.held_ticks.setdefault(d.uuid, []).append(tick.ts)
        self.send(wire.Done(tick.ts, time.monotonic() - started, len(domains),
                            len(self.guard.outstanding())))

    def _replay_held(self, ts: float, askable: Sequence[Domain], suspects: set[str]) -> None:
        """Domains asked again after being held back get the recent ticks they missed
        (sampled now, stamped with those ticks, as a replay after a kill is)."""
        horizon = ts - REPLAY_INTERVALS * self.cfg.interval
        for d in askable:
            for old in self.held_ticks.pop(d.uuid, []):
                if old >= horizon:
                    self._stats(old, [d], suspects)
        for uuid in [u for u, held in self.held_ticks.items() if held[-1] < horizon]:
            del self.held_ticks[uuid]  # held for long, or gone: nothing recent to replay

    def _collect(self, chunk: Sequence[Domain],
                 suspects: set[str]) -> tuple[dict[str, wire.Stats], set[str]]:
        """Every group of ``chunk`` (NOWAIT), and which of them libvirt says are stuck."""
        assert self.reader is not None
        raw = self.reader.collect(chunk)
        # Ask libvirt about the monitor only where the answer looks partial: one
        # RPC per hung domain instead of one per domain per cycle.
        stuck = {d.uuid for d in chunk
                 if (d.uuid in suspects or not monitor_answered(raw.get(d.uuid, {})))
                 and Inventory.unresponsive(d, suspect=d.uuid in suspects)}
        return raw, stuck

    def _stats(self, ts: float, chunk: Sequence[Domain], suspects: set[str]) -> None:
        """Every group of one chunk (NOWAIT); on a hang, its domains one by one."""
        sampled = time.time()
        try:
            raw, stuck = self._call("stats", chunk, lambda: self._collect(chunk, suspects))
        except Abandoned as exc:
            log.warning("stats of %s outlived the deadline; left to libvirtd",
                        ", ".join(d.name for d in chunk))
            if len(chunk) == 1:
                # Merely slow (a loaded host) or stuck for minutes: when it returns, its
                # answer is still this tick's sample, late but not lost.
                exc.call.late = lambda value: self._send_stats(ts, chunk, value)

            # The call holds the culprit's monitor job, so NOWAIT answers at once for it
            # and for the others: ask them one at a time, each routed afresh (a second
            # hang changes the route of those after it). Their QEMUs are watched once, all
            # together: confirming a frozen one can take up to a call's timeout. Their
            # datastores are probed again meanwhile: one that died since this cycle's
            # probe hangs each QEMU that is asked for block info next.
            self.probes.recheck(self._images(chunk))
            frozen = self.qemu.frozen((d.uuid, d.name) for d in chunk)
            for d in chunk:
                rt = next(r for r, doms in self.triage([d], frozen).items() if doms)
                if rt is Route.NORMAL:
                    self._stats(ts, [d], suspects | {d.uuid})
                elif rt is Route.HOLD:
                    self._flag_only(ts, [d])
                else:
                    self._careful(ts, [d], rt)
            return
        # Not a suspect, nor stuck by libvirt's account: a job held for long is no moment.
        settled = suspects | stuck
        again = [d for d in chunk if d.uuid in raw and d.uuid not in settled
                 and monitor_skipped(raw[d.uuid])]
        if again:
            self.partial.append(Partial(ts, again, raw, stuck, sampled, time.monotonic()))
            chunk = [d for d in chunk if d not in again]
        self._send_stats(ts, chunk, (raw, stuck), sampled)

    def _ask_partial_again(self) -> None:
        """Ask once more the domains whose answer lacked the monitor's part (see
        ASK_AGAIN_AFTER); send the fuller answer, or the first if this one is no better."""
        pending, self.partial = self.partial, []
        if not pending:
            return
        time.sleep(max(0.0, pending[-1].at + ASK_AGAIN_AFTER - time.monotonic()))
        for p in pending:
            # Routed afresh: one that froze, or whose store died, since is not asked again.
            ask = self.triage(p.domains)[Route.NORMAL]
            better: list[Domain] = []
            if ask:
                sampled = time.time()
                try:
                    raw, stuck = self._call("stats", ask,
                                            functools.partial(self._collect, ask, set()))
                except Abandoned:
                    log.warning("stats of %s, asked again, outlived the deadline; left to "
                                "libvirtd", few([d.name for d in ask]))
                else:
                    better = [d for d in ask
                              if d.uuid in raw and not monitor_skipped(raw[d.uuid])]
                    log.debug("asked again without the monitor's part: %s; fuller now: %s",
                              few([d.name for d in ask]),
                              few([d.name for d in better]) or "none")
                    if better:
                        self._send_stats(p.ts, better, (raw, stuck), sampled)
            worse = [d for d in p.domains if d not in better]
            if worse:
                self._send_stats(p.ts, worse, (p.raw, p.stuck), p.sampled)

    def _send_stats(self, ts: float, chunk: Sequence[Domain],
                    value: tuple[dict[str, wire.Stats], set[str]],
                    sampled: float | None = None) -> None:
        raw, stuck = value
        assert self.reader is not None
        if self.reader.block_in_bulk:
            for d in chunk:
                if d.uuid in raw:
                    as_block_info(raw[d.uuid], self.probes.sizes)
        self.send(wire.Results(ts, time.time() if sampled is None else sampled, [
            wire.DomainSample(d.uuid, d.name, d.tag, d.uuid in stuck, clean_stats(raw[d.uuid]),
                              d.label)
            for d in chunk if d.uuid in raw]))

    def _careful(self, ts: float, chunk: Sequence[Domain], rt: Route) -> None:
        """Domains that cannot answer everything: what needs no monitor (or no stat)."""
        assert self.reader is not None
        reader = self.reader
        if not chunk:
            return
        sampled = time.time()
        try:
            if rt is Route.FROZEN:
                raw = self._call("frozen", chunk, lambda: reader.collect_frozen(chunk))
            else:
                raw = self._call("stats", chunk, lambda: reader.collect(chunk, block=False))
        except Abandoned:
            self._flag_only(ts, chunk)
            return
        self.send(wire.Results(ts, sampled, [
            wire.DomainSample(d.uuid, d.name, d.tag, True, clean_stats(raw[d.uuid]), d.label)
            for d in chunk if d.uuid in raw]))

    def _flag_only(self, ts: float, domains: Sequence[Domain]) -> None:
        if domains:
            self.send(wire.Results(ts, time.time(), [
                wire.DomainSample(d.uuid, d.name, d.tag, True, {}, d.label) for d in domains]))

    def run(self) -> int:
        """Serve ticks until the supervisor closes the control pipe."""
        self.connect()
        while (tick := self.next_tick()) is not None:
            while True:
                try:
                    self.sample(tick)
                    break
                except libvirt.libvirtError as exc:
                    if self._alive():
                        log.warning("tick %s failed: %s", tick.ts, exc.get_error_message())
                        self.send(wire.Done(tick.ts, 0.0, 0, len(self.guard.outstanding())))
                        break
                    log.warning("lost the connection to %s: %s", self.cfg.connect,
                                exc.get_error_message())
                    self.connect()
        return 0


def _die_with_parent() -> None:
    # If the supervisor is SIGKILLed, no worker may outlive it holding libvirt calls.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def worker_main(index: int, cfg: Config, ctl_fd: int, out_fd: int, parent_pid: int,
                seed: dict[str, tuple[str | None, str | None]] | None = None) -> NoReturn:
    """Entry point after fork: never returns, always ends the process.

    ``seed``: the tags (and labels) the supervisor knows, by uuid."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _die_with_parent()
        if os.getppid() != parent_pid:
            os._exit(1)
        name = instance_name(index)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(OneLineFormatter(
                f"vpartcollect[%(process)d] {name}: %(levelname)s: %(message)s"))
        quiet_libvirt()
        code = Worker(index, cfg, ctl_fd, out_fd, seed).run()
    except (BrokenPipeError, KeyboardInterrupt):
        code = 0
    except wire.WireError as exc:
        log.error("bad control frame from the supervisor: %s", exc)
    except Exception:
        log.exception("worker crashed")
    finally:
        os._exit(code)
