"""The parent: forks one worker per instance, feeds them ticks, enforces deadlines, emits.

Shaped like gunicorn's arbiter: one single-threaded loop whose every pass
waits (selectors), reads frames, reaps, murders overdue workers, spawns the
missing ones and hands out ticks. The parent never holds a libvirt connection.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vpartcollect import wire
from vpartcollect.config import Config, ConfigError
from vpartcollect.daemon import release_memory, sd_notify
from vpartcollect.metrics import Metric, MetricBuilder
from vpartcollect.partition import instance_name
from vpartcollect.sinks.graphite import GraphiteSink
from vpartcollect.sinks.stdout import StdoutClosed, StdoutSink
from vpartcollect.watchdog import backlog_limit, kill_deadline, respawn_delay
from vpartcollect.worker import few, worker_main

log = logging.getLogger(__name__)

ONCE_GAP = 1.0  # seconds between the two samples --once needs for rates
ONCE_LIMIT = 120.0  # --once gives up after this long
STOP_GRACE = 2.0  # seconds workers get after SIGTERM before SIGKILL
# Per-domain state (rates, names, tags) of a domain not sampled for this long, or for
# PRUNE_INTERVALS intervals if longer, is forgotten: on a host where VMs come and go
# nothing may grow without bound. A domain back after that only misses one rate.
PRUNE_SECONDS = 60.0
PRUNE_INTERVALS = 10
RELEASE_AFTER = 100  # domains forgotten at once before freed memory is handed back


@dataclass
class Slot:
    """Everything the supervisor knows about one instance and its current worker."""

    index: int
    pid: int = 0
    ctl: int = -1
    out: int = -1
    decoder: wire.FrameDecoder = field(default_factory=wire.FrameDecoder)
    ready: bool = False
    ncpus: int = 0
    busy: str | None = None
    busy_uuids: list[str] = field(default_factory=list)
    deadline: float | None = None
    current: wire.Tick | None = None
    delivered: set[str] = field(default_factory=set)
    unresponsive: int = 0
    pending: deque[wire.Tick] = field(default_factory=deque)
    killed: bool = False
    suspects: set[str] = field(default_factory=set)  # hung a call; not seen healthy since
    failures: int = 0
    spawn_at: float = 0.0
    spawned: int = 0
    kills: int = 0
    blocked: int = 0  # calls the worker abandoned that libvirtd still runs
    missed_ticks: int = 0
    missing: int = 0  # ticks skipped in the current episode (logged once)
    once_due: float | None = None  # --once: when to queue the written tick
    once_done: bool = False
    names: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return instance_name(self.index)


class Supervisor:
    """Runs the collector until stopped (or, with ``once``, for one sample)."""

    def __init__(self, cfg: Config, once: bool = False,
                 reload: Callable[[], Config] | None = None) -> None:
        self.cfg = cfg
        self.once = once
        self.reload_config = reload
        self.ready = False
        self.builder = MetricBuilder(cfg.naming(), cfg.store_rates)
        self.stdout = StdoutSink(cfg.format) if cfg.use_stdout else None
        self.graphite = [GraphiteSink(ep, cfg.graphite_buffer, cfg.graphite_resend_seconds)
                         for ep in cfg.graphite]
        self.slots = [Slot(i) for i in range(cfg.instances)]
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.exit_code = 0
        self.backlog = backlog_limit(cfg.interval, cfg.call_timeout, cfg.chunk_size)
        self.silent: set[float] = set()  # ticks sampled only to prime rates (--once)
        self.final_tick = 0.0  # --once: the tick that is written
        self.next_tick = 0.0
        # uuid -> (tag, label) of every domain a worker reported: handed to new workers
        # so a respawn does not read every domain's metadata again.
        self.tags: dict[str, tuple[str | None, str | None]] = {}
        self._signals: list[int] = []
        self._pruned = time.time()
        self._sink_reg: dict[int, tuple[Any, int] | None] = {}
        self._wake_r = self._wake_w = -1

    # -- the loop ---------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or one sample with ``once``); return the exit code."""
        self._install_signals()
        self._plan_ticks()
        started = time.monotonic()
        try:
            while not self.stopping:
                self.spawn_missing()
                self.schedule_ticks()
                self.wait(self._timeout())
                self.handle_signals()
                self.reap()
                self.murder_overdue()
                if self.once and self._once_finished():
                    break
                if self.once and time.monotonic() - started > ONCE_LIMIT:
                    log.error("--once: no complete sample within %.0f s; giving up", ONCE_LIMIT)
                    self.exit_code = 1
                    break
        except StdoutClosed:
            self.exit_code = 0
            self.stdout = None
        finally:
            self.shutdown()
        return self.exit_code

    def _timeout(self) -> float:
        now_m = time.monotonic()
        waits = [self.next_tick - time.time()] if self.next_tick else []
        waits += [s.deadline - now_m for s in self.slots if s.deadline is not None]
        waits += [s.spawn_at - now_m for s in self.slots if not s.pid]
        waits += [s.once_due - now_m for s in self.slots if s.once_due is not None]
        waits += [w - now_m for g in self.graphite if (w := g.next_wakeup()) is not None]
        return max(0.0, min(waits, default=1.0))

    def wait(self, timeout: float) -> None:
        """Block until a pipe, socket or signal is ready (or ``timeout``), and serve it."""
        self._register_sinks()
        for key, mask in self.selector.select(timeout):
            kind, obj = key.data
            if kind == "worker":
                self.read_worker(obj)
            elif kind == "graphite":
                obj.on_ready(mask)
            else:
                self._drain_wakeup()

    # -- ticks --------------------------------------------------------------
    def _plan_ticks(self) -> None:
        now = time.time()
        if self.once:
            # Every worker samples at once; a rate needs a second sample ONCE_GAP after
            # that worker's first (queued when it is done, see _done), stamped alike.
            first = float(math.floor(now))
            self.final_tick = first + ONCE_GAP if self.cfg.store_rates else first
            if self.cfg.store_rates:
                self.silent.add(first)
            self.next_tick = first
        else:
            interval = self.cfg.interval
            self.next_tick = math.ceil(now / interval) * interval

    def schedule_ticks(self) -> None:
        """Queue the due tick for every instance and hand it to idle workers."""
        now = time.time()
        if self.next_tick and now >= self.next_tick:
            ts = self.next_tick
            if self.once:
                self.next_tick = 0.0
            else:
                interval = self.cfg.interval
                # After a suspend or a stall of the parent itself, skip to the present.
                self.next_tick = max(ts + interval, math.floor(now / interval) * interval)
                self.next_tick = round(self.next_tick, 6) or interval
                self.emit(self._global_metrics(ts))
                horizon = max(PRUNE_SECONDS, PRUNE_INTERVALS * interval)
                if ts - self._pruned >= horizon / 4:
                    self._prune(ts - horizon)
                    self._pruned = ts
            for slot in self.slots:
                slot.pending.append(wire.Tick(ts))
                while len(slot.pending) > self.backlog:
                    slot.pending.popleft()
                    slot.missed_ticks += 1
                    if not slot.missing:
                        log.warning("%s: worker %s; skipping ticks until it catches up",
                                    slot.name, "not ready" if not slot.ready else "behind")
                    slot.missing += 1
        for slot in self.slots:
            if slot.once_due is not None and time.monotonic() >= slot.once_due:
                slot.pending.append(wire.Tick(self.final_tick))
                slot.once_due = None
            self.feed(slot)

    def _prune(self, before: float) -> None:
        """Forget every domain not sampled since ``before``, in every per-domain table."""
        gone = self.builder.forget_older_than(before)
        for uuid in gone & self.tags.keys():
            del self.tags[uuid]
        for slot in self.slots:
            slot.suspects -= gone
            for uuid in gone & slot.names.keys():
                del slot.names[uuid]
        if gone:
            log.info("forgot %d domain(s) not sampled for %.0f s; tracking %d", len(gone),
                     time.time() - before, self.tracked())
        if len(gone) >= RELEASE_AFTER:
            release_memory()

    def tracked(self) -> int:
        """Domains held in the largest per-domain table (self-metric tracked_domains)."""
        return max(self.builder.tracked(), len(self.tags),
                   sum(len(s.names) for s in self.slots), sum(len(s.suspects) for s in self.slots))

    def feed(self, slot: Slot) -> None:
        """Send the next waiting tick to a ready, idle worker."""
        if not (slot.ready and slot.current is None and slot.pending):
            return
        queued = slot.pending.popleft()
        tick = wire.Tick(queued.ts, queued.skip, sorted(slot.suspects))
        slot.current, slot.delivered, slot.unresponsive = tick, set(tick.skip), 0
        try:
            os.write(slot.ctl, wire.encode(tick))
        except OSError:
            pass  # it died; reap() puts the tick back

    def _once_finished(self) -> bool:
        return all(s.once_done for s in self.slots)

    # -- workers ------------------------------------------------------------
    def spawn_missing(self) -> None:
        """Fork a worker for every instance that has none and whose backoff has passed."""
        now = time.monotonic()
        for slot in self.slots:
            if not slot.pid and now >= slot.spawn_at and not self.stopping:
                self.spawn(slot)

    def spawn(self, slot: Slot) -> None:
        """Fork one worker with a control pipe (to it) and a result pipe (from it)."""
        ctl_r, ctl_w = os.pipe()
        out_r, out_w = os.pipe()
        parent = os.getpid()
        # Objects the child inherits stay shared: the child's GC must not touch (and so
        # copy) every page of them.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # child
            _keep_only_fds({ctl_r, out_w})
            worker_main(slot.index, self.cfg, ctl_r, out_w, parent, self.tags)
        os.close(ctl_r)
        os.close(out_w)
        os.set_blocking(out_r, False)
        slot.pid, slot.ctl, slot.out = pid, ctl_w, out_r
        slot.decoder = wire.FrameDecoder()
        slot.ready, slot.killed, slot.busy, slot.deadline = False, False, None, None
        if slot.spawned:
            log.info("%s: worker respawned as pid %d", slot.name, pid)
        slot.spawned += 1
        self.selector.register(out_r, selectors.EVENT_READ, ("worker", slot))

    def read_worker(self, slot: Slot) -> None:
        """Read what a worker sent; kill it if the bytes are not valid frames."""
        try:
            data = os.read(slot.out, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipes(slot)  # it exited; reap() does the rest
            return
        try:
            messages = slot.decoder.feed(data)
        except wire.WireError as exc:
            log.error("%s: worker pid %d sent a bad frame (%s); killing it", slot.name,
                      slot.pid, exc)
            self._kill(slot, hung=False)
            return
        for msg in messages:
            self.handle(slot, msg)

    def handle(self, slot: Slot, msg: wire.Message) -> None:
        """Act on one message from a worker."""
        slot.busy, slot.deadline = None, None
        if isinstance(msg, wire.Busy):
            slot.busy, slot.busy_uuids = msg.what, msg.uuids
            slot.deadline = time.monotonic() + kill_deadline(self.cfg.call_timeout,
                                                             len(msg.uuids), msg.what)
        elif isinstance(msg, wire.Hello):
            slot.ready, slot.ncpus = True, msg.ncpus
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
        silent = msg.tick in self.silent
        if msg.domains:
            slot.failures = 0  # it did work: if it dies now, it is replaced at once
        out: list[Metric] = []
        for d in msg.domains:
            slot.names[d.uuid] = d.name
            self.tags[d.uuid] = (d.tag, d.label)
            slot.delivered.add(d.uuid)
            slot.unresponsive += d.unresponsive
            if not d.unresponsive:
                slot.suspects.discard(d.uuid)
            out += self.builder.domain_metrics(slot.index, msg.tick, msg.sampled, d,
                                               slot.ncpus)
        if not silent:
            self.emit(out)

    def _done(self, slot: Slot, msg: wire.Done) -> None:
        if slot.current is None or msg.tick != slot.current.ts:
            return
        slot.current, slot.failures, slot.blocked = None, 0, msg.blocked
        if self.once:
            if msg.tick == self.final_tick:
                slot.once_done = True
            else:
                slot.once_due = time.monotonic() + ONCE_GAP
        if slot.missing:
            log.warning("%s: caught up; %d tick(s) were skipped", slot.name, slot.missing)
            slot.missing = 0
        if msg.tick not in self.silent:
            self.emit(self._instance_metrics(slot, msg))
        self.feed(slot)

    def reap(self) -> None:
        """Collect exited workers; requeue the tick each was in; schedule its respawn."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._exited(slot, status)

    def _exited(self, slot: Slot, status: int) -> None:
        self._drain(slot)
        self._close_pipes(slot)
        if slot.ctl >= 0:
            os.close(slot.ctl)
        slot.pid, slot.ctl, slot.ready, slot.deadline = 0, -1, False, None
        if slot.current is not None:
            # Sample what it did not deliver; NOWAIT makes the hung domain answer at once.
            slot.pending.appendleft(wire.Tick(slot.current.ts, sorted(slot.delivered)))
            slot.current = None
        if self.stopping:
            return
        if slot.killed:
            slot.spawn_at = 0.0
            return
        slot.failures += 1
        delay = respawn_delay(slot.failures)
        slot.spawn_at = time.monotonic() + delay
        if slot.failures == 1 or delay != respawn_delay(slot.failures - 1):
            log.warning("%s: worker exited (%s); restarting in %.1f s", slot.name,
                        _describe_status(status), delay)

    def murder_overdue(self) -> None:
        """SIGKILL every worker stuck in a call past its deadline."""
        for slot in self.slots:
            if slot.pid and slot.deadline is not None and time.monotonic() > slot.deadline:
                # The answer may already sit in the pipe (the loop was slow): read it first.
                if slot.out >= 0 and _readable(slot.out):
                    self.read_worker(slot)
                    if slot.deadline is None or time.monotonic() <= slot.deadline:
                        continue
                names = few([slot.names.get(u, u) for u in slot.busy_uuids])
                log.warning("%s: %s%s passed its deadline; killing worker pid %d", slot.name,
                            slot.busy, f" of {names}" if names else "", slot.pid)
                slot.kills += 1
                if slot.busy in ("stats", "frozen"):  # a hung tag read says nothing of QEMU
                    slot.suspects.update(slot.busy_uuids)
                self._kill(slot, hung=True)

    def _kill(self, slot: Slot, hung: bool) -> None:
        # Only a hang earns an immediate respawn; a misbehaving worker gets backoff.
        slot.killed, slot.deadline = hung, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.pid, signal.SIGKILL)

    def _drain(self, slot: Slot) -> None:
        """Read every frame a dead worker left in its pipe."""
        while slot.out >= 0:
            before = slot.out
            self.read_worker(slot)
            if slot.out == before and not _readable(slot.out):
                break

    def _close_pipes(self, slot: Slot) -> None:
        if slot.out >= 0:
            self.selector.unregister(slot.out)
            os.close(slot.out)
            slot.out = -1

    # -- metrics out ------------------------------------------------------
    def emit(self, metrics: Sequence[Metric]) -> None:
        """Hand a batch to every output."""
        if not metrics:
            return
        for sink in self.graphite:
            sink.write(metrics)
        if self.stdout is not None:
            self.stdout.write(metrics)

    def _instance_metrics(self, slot: Slot, msg: wire.Done) -> list[Metric]:
        naming = self.builder.naming
        values = {"cycle_seconds": round(msg.seconds, 6), "domains": msg.domains,
                  "watchdog_kills": slot.kills, "respawns": max(0, slot.spawned - 1),
                  "unresponsive_domains": slot.unresponsive, "missed_ticks": slot.missed_ticks,
                  "blocked_calls": slot.blocked}
        return [Metric(naming.self_path(slot.index, k), v, msg.tick, instance=slot.index)
                for k, v in values.items()]

    def _global_metrics(self, ts: float) -> list[Metric]:
        naming = self.builder.naming
        tracked = [Metric(naming.self_path(None, "tracked_domains"), self.tracked(), ts)]
        if not self.graphite:
            return tracked
        return [*tracked, Metric(naming.self_path(None, "graphite_dropped"),
                       sum(g.dropped for g in self.graphite), ts),
                Metric(naming.self_path(None, "graphite_buffered"),
                       sum(g.buffered for g in self.graphite), ts)]

    def _register_sinks(self) -> None:
        # Every wait starts here: disconnected destinations also get their next attempt.
        for sink in self.graphite:
            sink.poll()
            want = sink.interest()
            had = self._sink_reg.get(id(sink))
            if had is not None and (want is None or had[0] != want[0]):
                self.selector.unregister(had[0])
                had = None
            if want is not None:
                if had is None:
                    self.selector.register(want[0], want[1], ("graphite", sink))
                elif had[1] != want[1]:
                    self.selector.modify(want[0], want[1], ("graphite", sink))
            self._sink_reg[id(sink)] = want

    # -- signals and stopping ---------------------------------------------
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wakeup", None))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)
        if signum in (signal.SIGTERM, signal.SIGINT) and self.stdout is not None:
            # A write in progress finishes if the reader takes it, but not forever.
            self.stdout.stopping = True

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def handle_signals(self) -> None:
        """Act on signals noted by the handler (outside the handler, in the loop)."""
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("%s: stopping", signal.Signals(sig).name)
                self.stopping = True
            elif sig == signal.SIGHUP:
                self.reload()

    def reload(self) -> None:
        """SIGHUP: apply a re-read configuration, or keep the running one if it is invalid."""
        if self.reload_config is None:
            return
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = self.reload_config()
        except ConfigError as exc:
            log.error("SIGHUP: %s; keeping the running configuration", exc)
            sd_notify("READY=1")
            return
        old, self.cfg = self.cfg, new
        self._reopen_outputs(old, new)
        self.builder.naming, self.builder.store_rates = new.naming(), new.store_rates
        self.backlog = backlog_limit(new.interval, new.call_timeout, new.chunk_size)
        if new.interval != old.interval and not self.once:
            self.next_tick = math.ceil(time.time() / new.interval) * new.interval
        if _worker_settings(old) != _worker_settings(new):
            self._restart_workers(new.instances)
        log.info("SIGHUP: configuration reloaded (%d instance(s))", new.instances)
        sd_notify("READY=1")

    def _reopen_outputs(self, old: Config, new: Config) -> None:
        if (new.use_stdout, new.format) != (old.use_stdout, old.format):
            self.stdout = StdoutSink(new.format) if new.use_stdout else None
        keep = {sink.endpoint: sink for sink in self.graphite}
        for sink in self.graphite:
            if sink.endpoint in new.graphite:
                sink.reconfigure(new.graphite_buffer, new.graphite_resend_seconds)
            else:
                self._forget_sink(sink)
                if sink.buffered:
                    log.warning("SIGHUP: %s removed with %d lines not sent", sink,
                                sink.buffered)
                sink.close()
        # An unchanged destination keeps its connection and what it has queued.
        self.graphite = [keep.get(ep) or GraphiteSink(ep, new.graphite_buffer,
                                                      new.graphite_resend_seconds)
                         for ep in new.graphite]

    def _forget_sink(self, sink: GraphiteSink) -> None:
        had = self._sink_reg.pop(id(sink), None)
        if had is not None:
            self.selector.unregister(had[0])

    def _restart_workers(self, instances: int) -> None:
        """Replace every worker (they carry the configuration they were forked with)."""
        self.tags.clear()  # read under the old settings (hostname metadata path, ...)
        for slot in self.slots:
            if slot.pid:
                self._kill(slot, hung=True)  # respawn at once, replay its tick
        for slot in self.slots[instances:]:
            self._close_pipes(slot)
            if slot.ctl >= 0:
                os.close(slot.ctl)
                slot.ctl = -1
        self.slots = self.slots[:instances] + [Slot(i) for i in range(len(self.slots),
                                                                        instances)]
        self.ready = False

    def shutdown(self) -> None:
        """Stop workers, keep what they already sent, flush outputs for a bounded time."""
        sd_notify("STOPPING=1")
        self.stopping = True
        if self.stdout is not None:
            self.stdout.stopping = True
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        limit = time.monotonic() + STOP_GRACE
        while any(s.pid for s in self.slots) and time.monotonic() < limit:
            try:
                self.wait(0.05)
            except StdoutClosed:
                self.stdout = None
            self.reap()
        for slot in self.slots:
            if slot.pid:
                os.kill(slot.pid, signal.SIGKILL)
                os.waitpid(slot.pid, 0)
                self._exited(slot, 0)
        self._flush_graphite()
        for sink in self.graphite:
            sink.close()
        signal.set_wakeup_fd(-1)

    def _flush_graphite(self) -> None:
        limit = time.monotonic() + self.cfg.flush_timeout
        while any(g.buffered for g in self.graphite) and time.monotonic() < limit:
            self.wait(min(0.1, max(0.0, limit - time.monotonic())))
        for sink in self.graphite:
            if sink.buffered:
                log.warning("%s: %d lines not sent before exit", sink, sink.buffered)
            elif not sink.finish(limit):
                log.warning("%s: did not confirm the last lines before exit", sink)


def _worker_settings(cfg: Config) -> tuple[object, ...]:
    """What a worker was forked with: a change means new workers."""
    return (cfg.connect, cfg.instances, cfg.refresh_interval, cfg.call_timeout, cfg.chunk_size,
            cfg.include, cfg.exclude, cfg.log_level, cfg.hostname_format,
            cfg.hostname_metadata_ns, cfg.hostname_metadata_path)


def _keep_only_fds(keep: set[int]) -> None:
    """In a fresh child: close every inherited descriptor but stdio and ``keep``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    # Workers never write metrics: stdout belongs to the parent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def _readable(fd: int) -> bool:
    sel = selectors.DefaultSelector()
    try:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(0))
    finally:
        sel.close()


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
