"""One tick of one worker, read top to bottom: the common path first, the exceptions after.

1. Which domains are this instance's (the session lists them), and how each is asked
   (triage: /proc, datastore probes, calls still blocked).
2. The common path: healthy domains in chunks, one bulk NOWAIT call each.
3. The exceptions: frozen QEMUs and dead datastores get what they can answer; a chunk
   call that hangs has its domains asked one by one, each routed afresh; a healthy
   domain whose answer lacked the monitor's part is asked once more; domains held back
   behind a call still in libvirtd are only flagged.
4. Done.

Every sample leaves through ``_send``: at most one per domain in a tick, carrying the
time its answer was read. A call abandoned at its deadline decides its domains' tick
there and then (unresponsive); whatever it returns later is not used.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from vpartcollect import wire
from vpartcollect.calls import CallKind
from vpartcollect.clock import read_clocks
from vpartcollect.collectd_values import vcpu_totals
from vpartcollect.daemon import few
from vpartcollect.samples import DomainSample, Stats
from vpartcollect.worker import second_ask
from vpartcollect.worker.guard import Abandoned
from vpartcollect.worker.inventory import Domain, Inventory
from vpartcollect.worker.libvirt_stats import (
    Answer,
    as_block_info,
    devices_in,
    monitor_answered,
)
from vpartcollect.worker.session import Session
from vpartcollect.worker.triage import Route, Triage

log = logging.getLogger(__name__)

Reading = tuple[dict[str, Answer], set[str]]  # answers by uuid, and which look stuck


def chunks(items: Sequence[Domain], size: int) -> Iterator[Sequence[Domain]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def clean_stats(raw: dict[str, Any]) -> Stats:
    """Keep only wire-safe values: bools become 0/1, other types are dropped."""
    out: Stats = {}
    for key, value in raw.items():
        kind = type(value)
        # Exact types first: a domain has a hundred values a tick, nearly all of them these.
        if kind is int or kind is float or kind is str:
            out[key] = value
        elif isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float, str)):
            out[key] = value
    return out


class Cycle:
    """Sampling one tick; ``sent`` (uuids already sampled for it) survives a reconnect."""

    def __init__(self, tick: wire.Tick, session: Session, triage: Triage,
                 sent: set[str] | None = None) -> None:
        self.tick = tick
        self.session = session
        self.triage = triage
        self.suspects = set(tick.suspects)
        self.sent: set[str] = set() if sent is None else sent
        self.held: list[second_ask.Held] = []
        self.started = time.monotonic()
        self.domains: list[Domain] = []
        self.totals = "vcpu_delay" in session.cfg.extra_stats  # per-domain steal sums

    def __repr__(self) -> str:
        return (f"<Cycle tick={self.tick.ts} {len(self.sent)}/{len(self.domains)} sent, "
                f"{len(self.held)} held for a second ask>")

    def run(self, previous: Sequence[Domain]) -> list[Domain]:
        """Sample every domain of this instance once for the tick; return them."""
        started = self.started = time.monotonic()
        s, cfg = self.session, self.session.cfg
        self.triage.start(previous)  # probes run while the listing and /proc checks do
        self.domains = s.own_domains(set(self.tick.skip) | self.sent)
        if s.reader.kernel is not None:
            s.reader.kernel.forget_except([d.uuid for d in s.inventory.known()])
        if s.down():  # libvirtd does not answer: what the kernel knows, nothing asked
            self.domains = self._from_kernel_only(self.domains)
            self._done(started)
            return self.domains
        routes = self.triage.routes(self.domains, s.guard)
        self.triage.note_held(routes[Route.HOLD], len(s.guard.outstanding()))
        self.triage.note_spared(routes[Route.SPARE], s.guard.caught_by(self.triage.qemu.why))
        # While a call of ours is blocked in libvirtd, one domain per call: a second hang
        # then names its culprit instead of taking a whole chunk with it.
        size = 1 if s.guard.outstanding() else cfg.chunk_size
        for chunk in chunks(routes[Route.NORMAL], size):
            if s.guard.outstanding():
                # A call hung since the routes were made (an outage freezing QEMUs one
                # after another): each domain looked at and routed afresh before its call.
                for d in chunk:
                    self._ask_routed(d)
            else:
                self._ask(chunk)
        for rt in (Route.FROZEN, Route.NO_BLOCK, Route.SPARE):
            for chunk in chunks(routes[rt], cfg.chunk_size):
                if rt is Route.NO_BLOCK and s.guard.outstanding():
                    # A dead store's QEMUs are the likeliest to freeze after their look:
                    # each looked at and routed afresh (past the cap: no monitor asked).
                    for d in chunk:
                        self._ask_routed(d)
                else:
                    self._ask_what_answers(chunk, rt)
        self._ask_again()
        self._send((d, None, True) for d in routes[Route.HOLD])
        self._check_kernel(routes[Route.NORMAL])
        self._done(started)
        return self.domains

    def _done(self, started: float) -> None:
        """The tick is over: how long it took, and what it saw of the host (health.py)."""
        s = self.session
        s.link.done(self.tick.ts, time.monotonic() - started, len(self.domains),
                    len(s.guard.outstanding()),
                    self.triage.health(self.domains, s.took_since_last()))

    def give_up(self) -> None:
        """The tick failed half-way (libvirt error): send the first answers still held for
        a second ask, as they were."""
        held, self.held = self.held, []
        self._send((h.dom, h.answer, h.unresponsive) for h in held)

    # -- the common path ----------------------------------------------------
    def _ask(self, chunk: Sequence[Domain]) -> None:
        """Every group of one chunk (NOWAIT); on a hang, its domains one by one."""
        s = self.session
        if s.down():  # an earlier call of this tick found libvirtd not answering at all
            self._from_kernel_only(chunk)
            return
        try:
            answers, stuck = s.call(CallKind.STATS, chunk, lambda: self._read(chunk))
        except Abandoned:
            log.warning("stats of %s outlived the deadline; left to libvirtd",
                        few([d.name for d in chunk]))
            # The new connection opened at the hang is the probe that tells them apart: it
            # needs libvirtd alone, no QEMU. Not opened in time: libvirtd as a whole does
            # not answer, not these domains; asking the rest (one by one after a hang, or
            # while a call of ours is blocked) would cost each a deadline, a connection
            # attempt and two calls left blocked (measured: 6 domains, 3-4 ticks lost).
            if s.down():
                self._from_kernel_only(chunk)
            else:
                self._after_hang(chunk)
            return
        ready = []
        for d in chunk:
            answer = answers.get(d.uuid)
            if answer is None:
                continue  # it stopped meanwhile
            self._follow_devices(d, answer)
            if second_ask.wanted(answer, d.uuid in self.suspects, d.uuid in stuck):
                self.held.append(second_ask.Held(d, answer, False, time.monotonic()))
            else:
                ready.append((d, answer, d.uuid in stuck))
        self._send(ready)

    def _read(self, chunk: Sequence[Domain], suspects: set[str] | None = None) -> Reading:
        """Stats of ``chunk`` (NOWAIT), and which of them libvirt says are stuck. Runs
        inside the guarded call: controlInfo is a libvirt call too."""
        suspects = self.suspects if suspects is None else suspects
        answers = self.session.reader.collect(chunk)
        # Ask about the monitor only where the answer looks partial: one RPC per hung
        # domain instead of one per domain per cycle.
        stuck = {d.uuid for d in chunk
                 if (d.uuid in suspects or not monitor_answered(
                     answers[d.uuid].stats if d.uuid in answers else {}))
                 and Inventory.unresponsive(d, suspect=d.uuid in suspects)}
        return answers, stuck

    # -- the exceptions -------------------------------------------------------
    def _after_hang(self, chunk: Sequence[Domain]) -> None:
        """The call holds the culprit's monitor job, so NOWAIT answers at once for it and
        for the others: ask them one at a time, each routed afresh (a second hang changes
        the route of those after it), their datastores probed again first. Should
        libvirtd stop answering meanwhile, the rest get the kernel's counters (``_ask``)."""
        frozen = self.triage.recheck(chunk)
        for i, d in enumerate(chunk):
            # The first is routed on the recheck; each later one looks at its QEMU again:
            # one that froze while an earlier ask hung is not asked for its monitor.
            self._ask_routed(d, frozen if i == 0 else None, suspect=True)

    def _ask_routed(self, d: Domain, frozen: set[str] | None = None,
                    suspect: bool = False) -> None:
        """Ask one domain as its route says now (``frozen``: a look at /proc just made;
        else one is made). ``suspect``: it was in a call that hung."""
        if frozen is None:
            frozen = self.triage.frozen([d])
        routes = self.triage.routes([d], self.session.guard, frozen)
        rt = next(r for r, ds in routes.items() if ds)
        if rt is Route.NORMAL:
            if suspect:
                self.suspects.add(d.uuid)
            self._ask([d])
        elif rt is Route.HOLD:
            self._send([(d, None, True)])
        else:
            self._ask_what_answers([d], rt)

    def _ask_what_answers(self, chunk: Sequence[Domain], rt: Route) -> None:
        """Domains that cannot answer everything: a frozen QEMU gets what needs no monitor,
        a dead datastore's domains everything but block. Both are unresponsive. A spared
        domain (calls of ours blocked on QEMUs that froze) gets what needs no monitor,
        unflagged."""
        reader = self.session.reader
        flag = rt is not Route.SPARE
        if self.session.down():
            self._from_kernel_only(chunk, flagged=flag)
            return
        try:
            if rt in (Route.FROZEN, Route.SPARE):
                answers = self.session.call(CallKind.FROZEN, chunk,
                                            lambda: reader.collect_frozen(chunk))
            else:
                answers = self.session.call(CallKind.STATS, chunk,
                                            lambda: reader.collect(chunk, block=False))
        except Abandoned:
            if self.session.down():  # libvirtd as a whole, not these QEMUs: the kernel's
                self._from_kernel_only(chunk, flagged=flag)
            else:
                if rt is Route.NO_BLOCK:  # a monitor call hung: a QEMU froze, counted now
                    self.triage.recheck(chunk)
                self._send((d, None, True) for d in chunk)
            return
        self._send((d, answers[d.uuid], flag) for d in chunk if d.uuid in answers)

    def _from_kernel_only(self, domains: Sequence[Domain],
                          flagged: bool = False) -> list[Domain]:
        """While libvirtd does not answer: cpu, vCPUs and interfaces from the kernel, the
        rest (block, balloon, state) missing; not the domains' fault, so not flagged
        (``flagged``: they are anyway, found frozen or on a dead datastore before).
        A domain the kernel reader does not cover is flagged, as any domain not read; one
        whose QEMU exited meanwhile stopped running, and is not sampled; so is one known
        only from the supervisor's roster (no handle: this worker never listed it) whose
        QEMU cannot be found. Returns the domains still running."""
        qemu = self.triage.qemu
        running = [d for d in domains if not qemu.exited(d.uuid)
                   and (d.handle is not None or qemu.pid(d.uuid, d.name) is not None)]
        answers = self.session.reader.kernel_only(running)
        self._send((d, answers.get(d.uuid), flagged or d.uuid not in answers)
                   for d in running)
        return running

    def _check_kernel(self, domains: Sequence[Domain]) -> None:
        """Once per refresh interval, a domain's kernel counters against libvirt's."""
        s = self.session
        if s.reader.kernel is None or not domains or s.guard.outstanding() or s.down():
            return
        due = [d for d in domains if s.reader.kernel.due(d, s.cfg.refresh_interval)]
        if due:
            with contextlib.suppress(Abandoned):
                s.call(CallKind.STATS, due,
                       lambda: s.reader.check_kernel(due, s.cfg.refresh_interval))

    def _ask_again(self) -> None:
        """The second ask (see second_ask.py), and more while an answer still lacks the
        monitor's part and the tick has time; routed afresh each time: one that froze, or
        whose store died, since is not asked again. The second ask is always made (a tick
        whose cycle is past its share already, after a call's deadline, needs it most);
        ``self.held`` keeps what is still held, for ``give_up`` if a call raises."""
        last_ask = self.started + self.session.cfg.interval * second_ask.TICK_SHARE
        asks = 0
        for wait in second_ask.ASK_AGAIN_AFTER:
            at = max(h.at for h in self.held) + wait if self.held else 0.0
            if not self.held or (asks and at > last_ask):
                break
            time.sleep(max(0.0, at - time.monotonic()))
            if self.session.down():  # libvirtd stopped answering: the first answers stand
                break
            self.held = self._ask_held(self.held)
            asks += 1
        held, self.held = self.held, []
        if held and asks:
            log.info("%s: monitor's part skipped at tick %s (another call held its job "
                     "through %d ask(s)); sent without it", few([h.dom.name for h in held]),
                     self.tick.ts, asks)
        self._send((h.dom, h.answer, h.unresponsive) for h in held)

    def _ask_held(self, held: list[second_ask.Held]) -> list[second_ask.Held]:
        """Ask ``held`` once more; send what is settled, return those to ask again."""
        ask = self.triage.routes([h.dom for h in held], self.session.guard)[Route.NORMAL]
        answers: dict[str, Answer] = {}
        stuck: set[str] = set()
        if ask:
            try:
                answers, stuck = self.session.call(CallKind.STATS, ask,
                                                   lambda: self._read(ask, set()))
            except Abandoned:
                log.warning("stats of %s, asked again, outlived the deadline; left to "
                            "libvirtd", few([d.name for d in ask]))
        now = time.monotonic()
        settled, again = [], []
        for h in held:
            second, second_stuck = answers.get(h.dom.uuid), h.dom.uuid in stuck
            if second_ask.again(h, second, second_stuck):
                again.append(second_ask.Held(h.dom, h.answer, h.unresponsive, now))
            else:
                settled.append((h.dom, *second_ask.better(h, second, second_stuck)))
        log.debug("asked again without the monitor's part: %s; fuller now: %s",
                  few([h.dom.name for h in held]),
                  few([d.name for d, a, _ in settled if a is answers.get(d.uuid)]) or "none")
        self._send(settled)
        return again

    def _follow_devices(self, dom: Domain, answer: Answer) -> None:
        """Bulk stats name the disks and NICs every cycle: a snapshot, a pivot or a
        hot-plug shows here, and the new images get their datastore probed."""
        devices = devices_in(answer.stats) if self.session.reader.block_in_bulk else None
        if devices is None:
            return
        known = dom.disks is not None
        if dom.devices_changed(*devices) and known:
            log.info("%s: devices changed: disks %s", dom.name,
                     few([f"{target}={source or '-'}" for target, source in devices[0]]))

    # -- the one place a sample is built ------------------------------------
    def _send(self, items: Iterable[tuple[Domain, Answer | None, bool]]) -> None:
        """Send (domain, answer or None for a flag alone, unresponsive) as samples of this
        tick; a domain already sampled for it is never sampled again."""
        samples = []
        for dom, answer, unresponsive in items:
            if dom.uuid in self.sent:
                continue
            self.sent.add(dom.uuid)
            stats: Stats = {}
            if answer is not None:
                stats = clean_stats(answer.stats)
                if self.totals:
                    vcpu_totals(stats)
                if self.session.reader.block_in_bulk:
                    as_block_info(stats, self.triage.sizes)
            wall, mono = (answer.read_at, answer.read_mono) if answer else read_clocks()
            told = None
            if dom.interfaces is not None and dom.interfaces != dom.told:
                told = dom.told = dom.interfaces  # the supervisor's roster: new or changed
            samples.append(DomainSample(dom.uuid, dom.name, dom.tag, unresponsive, stats,
                                        wall, dom.label, mono, told))
        self.session.link.results(self.tick.ts, samples)
