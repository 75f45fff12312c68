"""The control plane: forks one worker per instance, feeds it ticks, enforces deadlines.

Shaped like gunicorn's arbiter: one single-threaded loop whose every pass
waits (selectors), reads frames, reaps, murders overdue workers, spawns the
missing ones and hands out ticks. It never touches a sample's content: what
workers send goes to the publisher (the data path). The parent never holds a
libvirt connection.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable

from vpartcollect import children, handover, wire
from vpartcollect.clock import ClockWatch, read_clocks
from vpartcollect.config import Config, ConfigError
from vpartcollect.daemon import SignalPipe, few, release_memory, sd_notify
from vpartcollect.output.publisher import BadSample, OutputClosed, OutputFailed, Publisher
from vpartcollect.output.sinks.base import Registrations
from vpartcollect.preflight import LibvirtProbe, check_spool_dir, spool_changed
from vpartcollect.roster import Roster
from vpartcollect.slot import Slot, describe_stuck, readable
from vpartcollect.ticks import Schedule
from vpartcollect.watchdog import backlog_limit, kill_deadline, unread_deadline
from vpartcollect.worker import worker_main

log = logging.getLogger(__name__)

ONCE_LIMIT = 120.0  # --once gives up after this long
STOP_GRACE = 2.0  # seconds workers get after SIGTERM before SIGKILL
KILL_GRACE = 1.0  # then to be reaped; one still there (in D state) is left behind
# Per-domain state (rates, names, tags) of a domain not sampled for ``forget_after``
# seconds (60 by default), or for PRUNE_INTERVALS intervals if longer, is forgotten: on a
# host where VMs come and go nothing may grow without bound. A domain back after that
# only misses one rate.
PRUNE_INTERVALS = 10
RELEASE_AFTER = 100  # domains forgotten at once before freed memory is handed back


class Supervisor:
    """Runs the collector until stopped (or, with ``once``, for one sample)."""

    def __init__(self, cfg: Config, once: bool = False,
                 reload: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        self.once = once
        self.reload_config = reload
        self.ready = False
        self.backlog = backlog_limit(cfg.interval, cfg.call_timeout, cfg.chunk_size)
        # The ledger remembers more ticks per domain than a worker may replay.
        self.publisher = Publisher(cfg, keep_ticks=self.backlog + 4)
        self.slots = [Slot(i) for i in range(cfg.instances)]
        # A reload's old workers finishing their tick, and the ticks they owe (handover.py).
        self.retiring: list[Slot] = []
        self.owed: set[float] = set()
        self.retire_by = 0.0  # monotonic: old workers still at it then are killed
        self.probe: tuple[LibvirtProbe, Config] | None = None  # a reload's new URI, opening
        # A reload's config whose URI opened: applied by the loop after wait(), never
        # while wait() still serves events of the select() (reconfiguring may close their
        # objects).
        self.approved: Config | None = None
        self.retire_killed = False  # the retiring workers were SIGKILLed at retire_by
        self.old_tags: dict[str, tuple[str | None, str | None]] = {}  # roster's, pre-reload
        self.selector = selectors.DefaultSelector()
        self.ctl_registered = Registrations()  # control pipes with a tick waiting to go
        self.stopping = False
        self.exit_code = 0
        self.schedule = Schedule(cfg.interval, time.time(), once, cfg.store_rates)
        self.roster = Roster()  # names, tags (for new workers), suspects
        self.signals: SignalPipe | None = None
        self.clock = ClockWatch(*read_clocks())
        self._pruned = time.monotonic()

    # -- the loop ---------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or one sample with ``once``); return the exit code."""
        self.signals = SignalPipe((signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD),
                                  self._on_signal)
        self.selector.register(self.signals.fd, selectors.EVENT_READ, ("wakeup", None))
        self.clock = ClockWatch(*read_clocks())
        started = time.monotonic()
        try:
            while not self.stopping:
                self.spawn_missing()
                self.schedule_ticks()
                self.wait(self._timeout())
                if self.approved is not None:
                    new, self.approved = self.approved, None
                    self._apply(new)
                self.handle_signals()
                self.reap()
                self.murder_overdue()
                if self.schedule.finished(len(self.slots)):
                    break
                if self.once and time.monotonic() - started > ONCE_LIMIT:
                    log.error("--once: no complete sample within %.0f s; giving up", ONCE_LIMIT)
                    self.exit_code = 1
                    break
        except OutputClosed as exc:  # a reader gone: 0; the last output failing: 1
            self.exit_code = 1 if isinstance(exc, OutputFailed) else 0
        finally:
            self.shutdown()
        return self.exit_code

    def _timeout(self) -> float:
        now_m = time.monotonic()
        left = self.schedule.seconds_left(time.time())
        waits = [left] if left is not None else []
        waits += [s.deadline - now_m for s in self.slots + self.retiring
                  if s.deadline is not None]
        if self.retiring:
            waits.append(self.retire_by - now_m)
        waits += [s.spawn_at - now_m for s in self.slots if not s.pid]
        unread = unread_deadline(self.cfg.call_timeout)
        waits += [s.ctl.sent_since + unread - now_m for s in self.slots
                  if s.ctl is not None and s.ctl.sent_since is not None]
        if (again := self.schedule.next_again()) is not None:
            waits.append(again - now_m)
        if (wake := self.publisher.next_wakeup()) is not None:
            waits.append(wake - now_m)
        return max(0.0, min(waits, default=1.0))

    def wait(self, timeout: float) -> None:
        """Block until a pipe, socket or signal is ready (or ``timeout``), and serve it."""
        self.publisher.register(self.selector)
        for slot in self.slots:
            if slot.ctl is not None:
                self.ctl_registered.update(self.selector, slot.ctl, slot.ctl.interest(),
                                           ("ctl", slot.ctl))
        for key, mask in self.selector.select(timeout):
            kind, obj = key.data
            if kind == "worker":
                self.read_worker(obj)
            elif kind == "ctl":
                obj.on_ready(mask)
            elif kind == "probe":
                self._probed()
            elif kind == "sink":
                self.publisher.on_ready(obj, mask)
            else:
                assert self.signals is not None
                self.signals.drain()

    # -- ticks --------------------------------------------------------------
    def schedule_ticks(self) -> None:
        """Queue the due tick for every instance and hand it to idle workers."""
        wall, mono = read_clocks()
        if (step := self.clock.step(wall, mono)) and not self.once:
            self.clock_stepped(step, wall)
        ts = self.schedule.due(wall)
        if ts is not None:
            if not self.once:
                self.publisher.new_tick(ts, self.tracked())
                horizon = max(self.cfg.forget_after, PRUNE_INTERVALS * self.cfg.interval)
                if mono - self._pruned >= horizon / 4:
                    self._prune(mono - horizon)
                    self._pruned = mono
            for slot in self.slots:
                slot.queue(wire.Tick(ts), self.backlog)
        for index in self.schedule.again_due(time.monotonic()):
            if index < len(self.slots):
                self.slots[index].pending.append(wire.Tick(self.schedule.final))
        for slot in self.slots:
            self.feed(slot)

    def clock_stepped(self, step: float, wall: float) -> None:
        """The wall clock stepped by ``step`` seconds and now reads ``wall``: ticks follow
        the new clock at once (never a stamp already written), ticks of the old clock
        still waiting for a worker go (counted as missed), and no rate spans the step
        (rates.py does that from each sample's read times)."""
        resume = self.schedule.realign(wall)
        self.publisher.clock_stepped()
        for slot in self.slots:
            slot.missed_ticks += len(slot.pending)
            slot.pending.clear()
        # A reload's owed ticks of the old clock go too, but the ones an old worker is
        # still in: each new worker would have replayed them (handover.py).
        inflight = {s.current.ts for s in self.retiring if s.current is not None}
        stale = self.owed - inflight
        self.owed -= stale
        for slot in self.slots:
            slot.missed_ticks += len(stale)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(resume))
        if resume - wall > self.cfg.interval:
            log.warning("the wall clock stepped %+.1f s; the times it went back to were "
                        "written already: writing resumes at %s (in %.0f s)", step, stamp,
                        resume - wall)
        else:
            log.warning("the wall clock stepped %+.1f s; ticks follow the new clock from %s",
                        step, stamp)

    def _prune(self, before: float) -> None:
        """Forget every domain not sampled since monotonic ``before``, in every table."""
        gone = self.publisher.forget_older_than(before)
        self.roster.forget(gone)
        if gone:
            log.info("forgot %d domain(s) not sampled for %.0f s; tracking %d", len(gone),
                     time.monotonic() - before, self.tracked())
        if len(gone) >= RELEASE_AFTER:
            release_memory()

    def tracked(self) -> int:
        """Domains held in the largest per-domain table (self-metric tracked_domains)."""
        return max(self.publisher.tracked(), self.roster.size())

    def feed(self, slot: Slot) -> None:
        """Send the next waiting tick to a ready, idle worker (none while a reload's old
        workers finish theirs: the new ones first replay what those leave)."""
        if self.retiring or not (slot.ready and slot.current is None and slot.pending):
            return
        queued = slot.pending.popleft()
        tick = wire.Tick(queued.ts, queued.skip, self.roster.suspects_of(slot.index))
        slot.current, slot.delivered, slot.unresponsive = tick, set(tick.skip), 0
        slot.send(tick, time.monotonic())  # never blocks: a worker not reading costs only it

    # -- workers ------------------------------------------------------------
    def spawn_missing(self) -> None:
        """Fork a worker for every instance that has none and whose backoff has passed."""
        now = time.monotonic()
        for slot in self.slots:
            if not slot.pid and now >= slot.spawn_at and not self.stopping:
                self.spawn(slot)

    def spawn(self, slot: Slot) -> None:
        """Fork one worker for ``slot``, starting from what the supervisor knows: the
        domains' tags and interfaces, and the hello of the slot's previous worker."""
        parent, seed, before = os.getpid(), self.roster.seed(), slot.hello
        slot.start(lambda ctl, out: worker_main(slot.index, self.cfg, ctl, out, parent, seed,
                                                before), self.selector)
        if slot.ctl is not None:  # the selector lets go of the pipe before it closes
            slot.ctl.on_close = functools.partial(self.ctl_registered.drop, self.selector,
                                                  slot.ctl)
        if slot.pid:  # else it could not fork: tried again after a backoff
            children.register(slot.pid, lambda status: self._exited(slot, status))

    def read_worker(self, slot: Slot, alive: bool = True) -> None:
        """Act on what a worker sent (a worker sending garbage, or a frame the supervisor
        cannot use, is killed: it costs that worker, never the supervisor). ``alive``
        False: it was reaped already, its pid is no longer its own to kill."""
        for msg in slot.read(self.selector):
            try:
                self.handle(slot, msg)
            except (wire.WireError, BadSample) as exc:
                log.error("%s: worker pid %d sent a frame the supervisor cannot use (%s)%s",
                          slot.name, slot.pid, exc, "; killing it" if alive else "")
                if alive:
                    slot.kill(hung=False)
                return

    def handle(self, slot: Slot, msg: wire.Message) -> None:
        """Act on one message from a worker."""
        slot.busy, slot.deadline = None, None
        if isinstance(msg, wire.Busy):
            slot.busy, slot.busy_uuids = msg.kind, msg.uuids
            slot.deadline = time.monotonic() + kill_deadline(self.cfg.call_timeout,
                                                             len(msg.uuids), msg.kind)
        elif isinstance(msg, wire.Hello):
            slot.ready, slot.ncpus, slot.hello = True, msg.ncpus, msg
            if not self.ready and all(s.ready for s in self.slots):
                self.ready = True
                sd_notify(f"READY=1\nSTATUS=sampling with {len(self.slots)} instance(s)")
            log.debug("%s: pid %d ready on %s (bulk: %s; per-domain: %s)", slot.name,
                      msg.pid, msg.driver, ",".join(msg.bulk_groups) or "-",
                      ",".join(msg.fallback_groups) or "-")
            self.feed(slot)
        elif isinstance(msg, wire.Results):
            self._results(slot, msg)
        elif isinstance(msg, wire.Done):
            self._done(slot, msg)

    def _results(self, slot: Slot, msg: wire.Results) -> None:
        if slot.current is None or msg.tick != slot.current.ts:
            raise wire.WireError(f"results for tick {msg.tick}, not the tick it was given")
        if msg.domains:
            slot.failures = 0  # it did work: if it dies now, it is replaced at once
        for d in msg.domains:
            self.roster.seen(slot.index, d)
            slot.delivered.add(d.uuid)  # what a successor skips if this worker dies now
            slot.unresponsive += d.unresponsive
        self.publisher.samples(slot.index, msg, slot.ncpus,
                               silent=not self.schedule.written(msg.tick))

    def _done(self, slot: Slot, msg: wire.Done) -> None:
        if slot.current is None or msg.tick != slot.current.ts:
            return
        slot.current, slot.failures, slot.blocked = None, 0, msg.blocked
        self.schedule.done(slot.index, msg.tick, time.monotonic())
        if slot.missing:
            log.warning("%s: caught up; %d tick(s) were skipped", slot.name, slot.missing)
            slot.missing = 0
        if self.schedule.written(msg.tick):
            self.publisher.instance_done(slot.index, msg.tick, slot.counters(msg), msg.health)
        self.feed(slot)

    @staticmethod
    def reap() -> None:
        """Collect every exited child and hand it to its owner: a worker's slot requeues
        its tick and schedules its respawn; a spooler or a name lookup is its sink's."""
        children.reap()

    def _exited(self, slot: Slot, status: int) -> None:
        try:
            while slot.out >= 0 and readable(slot.out):  # what it wrote before dying counts
                self.read_worker(slot, alive=False)
        finally:  # even when an output closed meanwhile: the pid is no longer its own
            slot.close_out(self.selector)
            if slot in self.retiring:
                slot.exited(status, True, time.monotonic())
                self.retiring.remove(slot)
                if not self.retiring:
                    self._hand_over()
            elif not any(s is slot for s in self.slots):  # handed over without it (D state)
                slot.exited(status, True, time.monotonic())
            else:
                slot.exited(status, self.stopping, time.monotonic())

    def murder_overdue(self) -> None:
        """SIGKILL every worker stuck in a call past its deadline."""
        for slot in self.slots + self.retiring:
            if slot.overdue(time.monotonic()):
                # The answer may already sit in the pipe (the loop was slow): read it first.
                if slot.out >= 0 and readable(slot.out):
                    self.read_worker(slot)
                    if slot.deadline is None or time.monotonic() <= slot.deadline:
                        continue
                names = few([self.roster.name(u) for u in slot.busy_uuids])
                kind = slot.busy.value if slot.busy else "a call"
                log.warning("%s: %s%s passed its deadline; killing worker pid %d", slot.name,
                            kind, f" of {names}" if names else "", slot.pid)
                slot.kills += 1
                if slot.busy is not None and slot.busy.involves_qemu:
                    self.roster.suspect(slot.index, slot.busy_uuids)
                slot.kill(hung=True)
        for slot in self.slots:  # its tick left in the pipe: stopped or stuck
            slot.kill_if_unread(time.monotonic(), unread_deadline(self.cfg.call_timeout))
        if self.retiring and time.monotonic() > self.retire_by:
            if self.retire_killed:
                # SIGKILLed an interval ago and still not reaped (e.g. in D state in a
                # stat of a hung FUSE mount): the new workers go on without waiting. Its
                # late exit is still reaped (_exited); the ledger refuses a tick twice.
                for slot in self.retiring:
                    log.warning("%s: the old worker pid %d did not exit after SIGKILL; "
                                "the new workers go on without it", slot.name, slot.pid)
                    slot.close_out(self.selector)
                self.retiring, self.retire_killed = [], False
                self._hand_over()
                return
            # A tick is not worth more: e.g. one reconnecting to a libvirtd that is away.
            for slot in self.retiring:
                log.warning("%s: the old worker pid %d did not finish its tick after the "
                            "reload; killing it (the new workers sample what it did not)",
                            slot.name, slot.pid)
                slot.kill(hung=True)
            self.retire_by = time.monotonic() + self.cfg.interval
            self.retire_killed = True

    # -- signals and stopping ---------------------------------------------
    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.publisher.stop_writes()

    def handle_signals(self) -> None:
        """Act on signals noted by the handler (outside the handler, in the loop)."""
        for sig in self.signals.pending() if self.signals is not None else []:
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("%s: stopping", signal.Signals(sig).name)
                self.stopping = True
            elif sig == signal.SIGHUP:
                self.reload()

    def reload(self) -> None:
        """SIGHUP: apply a re-read configuration, or keep the running one if it is invalid
        or cannot work here (the checks ``run`` makes: a new spool directory must take
        files, a new URI must open; the loop goes on while it is being opened)."""
        if self.reload_config is None:
            return
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self._stop_probe()  # a newer SIGHUP wins over one still being checked
        try:
            new = self.reload_config()
            if spool_changed(self.cfg, new):
                check_spool_dir(new, create=True)
            if new.prometheus is not None:  # its module (prometheus_client) only when on
                from vpartcollect.output.prometheus.channel import prebind
                prebind(self.cfg, new)
        except ConfigError as exc:
            log.error("SIGHUP: %s; keeping the running configuration", exc)
            sd_notify("READY=1")
            return
        if new.connect != self.cfg.connect:
            try:
                probe = LibvirtProbe(new.connect)
            except OSError as exc:  # out of processes or descriptors
                log.error("SIGHUP: cannot check libvirt at %s (%s); keeping the running "
                          "configuration", new.connect, exc.strerror or exc)
                sd_notify("READY=1")
                return
            self.selector.register(probe.fd, selectors.EVENT_READ, ("probe", None))
            self.probe = (probe, new)
            return
        self._apply(new)

    def _probed(self) -> None:
        """The reload's new URI was opened, or could not be."""
        if self.probe is None:  # a stale event: stopped earlier in the same select()
            return
        probe, new = self.probe
        why = probe.answer()
        if why is None:
            return
        self._stop_probe()
        if why:
            log.error("SIGHUP: %s; keeping the running configuration", why)
            sd_notify("READY=1")
        else:
            self.approved = new  # applied by the loop once this select() is served

    def _stop_probe(self) -> None:
        if self.probe is not None:
            self.selector.unregister(self.probe[0].fd)
            self.probe[0].close()
            self.probe = None

    def _apply(self, new: Config) -> None:
        """Run with a configuration known to work from now on."""
        old, self.cfg = self.cfg, new
        self.publisher.reconfigure(old, new, self.selector)
        self.backlog = backlog_limit(new.interval, new.call_timeout, new.chunk_size)
        self.publisher.ledger.keep = max(self.publisher.ledger.keep, self.backlog + 4)
        self.schedule.reinterval(new.interval, time.time())
        if old.worker_settings() != new.worker_settings():
            self._restart_workers(new.instances, old)
        log.info("SIGHUP: configuration reloaded (%d instance(s))", new.instances)
        sd_notify("READY=1")

    def _restart_workers(self, instances: int, old_cfg: Config) -> None:
        """Replace every worker (they carry the configuration they were forked with): the
        old ones finish the tick they are in, the new ones replay what is left of it."""
        # Read under the old settings (hostname metadata path...); the partition tags
        # (metadata of a fixed namespace) still tell the handover who may own what.
        self.old_tags = self.roster.tags
        self.roster.forget_tags()
        self.retire_killed = False
        self.retire_by = time.monotonic() + max(
            old_cfg.interval, kill_deadline(old_cfg.call_timeout, old_cfg.chunk_size))
        for slot in self.slots:
            self.owed |= handover.retire(slot)
            if slot.pid:
                self.retiring.append(slot)
        old, self.slots = self.slots, [handover.successor(i, self.slots)
                                       for i in range(instances)]
        for slot in old:
            if not slot.pid:  # no worker to wait for (between a death and its respawn)
                slot.close_out(self.selector)
        if not self.retiring:
            self._hand_over()
        self.ready = False

    def _hand_over(self) -> None:
        """A reload's old workers are gone: the new ones first replay what those owed."""
        for slot in self.slots:
            handover.replay(slot, self.owed, self.publisher.ledger.emitted, self.backlog,
                            functools.partial(self._may_own, slot.index))
            self.feed(slot)
        self.owed, self.old_tags = set(), {}

    def _may_own(self, index: int, uuid: str) -> bool:
        """Whether the new worker ``index`` may sample ``uuid`` (not known: it may)."""
        tag, name = self.old_tags.get(uuid), self.roster.names.get(uuid)
        if tag is None or name is None:
            return True
        owner = self.cfg.sampled_by(name, tag[0])
        return owner is not None and owner.instance == index

    def _reap_workers(self, seconds: float) -> None:
        """Serve and reap until every worker is gone or ``seconds`` have passed."""
        limit = time.monotonic() + seconds
        while any(s.pid for s in self.slots) and time.monotonic() < limit:
            # An output that closes meanwhile has left the publisher's sinks already.
            with contextlib.suppress(OutputClosed):
                self.wait(0.05)
            with contextlib.suppress(OutputClosed):  # a drain's emit found an output gone
                self.reap()

    def shutdown(self) -> None:
        """Stop workers, keep what they already sent, flush outputs for a bounded time."""
        sd_notify("STOPPING=1")
        self.stopping = True
        self.publisher.stop_writes()
        self.slots += self.retiring
        self.retiring = []
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        self._reap_workers(STOP_GRACE)
        for slot in self.slots:
            slot.kill(hung=False)
        # Never an unbounded waitpid: a worker with a thread in D state (a stat() on a
        # hung NFS/FUSE mount) is not reapable until the kernel call returns, and what
        # the outputs hold must still be written before systemd's stop timeout.
        self._reap_workers(KILL_GRACE)
        with contextlib.suppress(OutputClosed):
            self.reap()  # one that exited in the last pass's 50 ms is not left behind
        if left := [s for s in self.slots if s.pid]:
            log.warning("left behind at exit, still there %.0f s after SIGKILL (gone once "
                        "its kernel call returns): %s", KILL_GRACE, "; ".join(
                            f"{s.name} worker pid {s.pid}: {describe_stuck(s.pid)}"
                            for s in left))
        self._stop_probe()
        self.publisher.finish(self.selector)
        if self.signals is not None:
            self.signals.close()

