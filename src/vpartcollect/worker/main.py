"""One instance's life in its forked child: process set-up, then ticks until the pipe closes.

A worker is thin on purpose: it talks to libvirt and sends raw results; the
supervisor owns naming, rates and outputs, so nothing is lost when it kills a
worker stuck in a call. The flow, one module each: ``link`` (the pipes),
``session`` (the connection, every call announced and held to a deadline),
``triage`` (how each domain is asked), ``cycle`` (one tick).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import NoReturn

import libvirt

from vpartcollect import wire
from vpartcollect.config import Config
from vpartcollect.daemon import OneLineFormatter, die_with_parent
from vpartcollect.libvirt_conn import error_text, quiet_libvirt
from vpartcollect.partition import instance_name
from vpartcollect.roster import Seed
from vpartcollect.worker.cycle import Cycle
from vpartcollect.worker.guard import Guard
from vpartcollect.worker.inventory import Domain
from vpartcollect.worker.kernel_reader import KernelReader
from vpartcollect.worker.link import Link
from vpartcollect.worker.session import Session
from vpartcollect.worker.triage import Triage

log = logging.getLogger(__name__)


class Worker:
    """The child side of one ``virt-N`` instance.

    Constructed after fork, in the child: it must not touch the supervisor's pipes,
    sockets or libvirt state (there is none: the parent never connects)."""

    def __init__(self, index: int, cfg: Config, link: Link, seed: Seed | None = None,
                 before: wire.Hello | None = None) -> None:
        self.index = index
        self.cfg = cfg
        self.link = link
        self.seed = seed or {}
        self.before = before  # the hello of this instance's previous worker, if any
        self.guard = Guard()  # outlives connections: its calls hold libvirtd threads
        self.triage = Triage(cfg)
        # Outlives connections too; finds QEMUs where triage does.
        self.kernel = KernelReader(lambda d: self.triage.qemu.pid(d.uuid, d.name),
                                   retry=cfg.refresh_interval)
        self.last: list[Domain] = []  # the domains of the previous tick
        self.skipped_for = 0.0  # the reconnection whose passed ticks were said skipped

    def __repr__(self) -> str:
        return f"<Worker {instance_name(self.index)} pid {os.getpid()} {self.guard!r}>"

    def run(self) -> int:
        """Serve ticks until the supervisor closes the control pipe."""
        if self.before is None:
            session = Session.open(self.index, self.cfg, self.link, self.guard, self.seed,
                                   kernel=self.kernel)
        else:  # a respawn: libvirtd may be why the last worker died, or be away meanwhile
            session = Session.resume(self.index, self.cfg, self.link, self.guard, self.seed,
                                     self.kernel, self.before)
        while (tick := self.link.next_tick()) is not None:
            session = self.serve(tick, session)
        return 0

    def serve(self, tick: wire.Tick, session: Session) -> Session:
        """Sample one tick; after a lost connection, reconnect and sample what is left of
        it (the domains already sent are not sent again). Return the session to go on."""
        if self.passed(tick, session):
            return session
        session.tidy({d.uuid: d.name for d in self.last})
        sent: set[str] = set()
        while True:
            cycle = Cycle(tick, session, self.triage, sent)
            try:
                self.last = cycle.run(self.last)
                return session
            except libvirt.libvirtError as exc:
                cycle.give_up()
                if session.alive():
                    log.warning("tick %s failed: %s", tick.ts, error_text(exc))
                    self.link.done(tick.ts, 0.0, 0, len(self.guard.outstanding()))
                    return session
                log.warning("lost the connection to %s: %s", self.cfg.connect,
                            error_text(exc))
                if session.reader.kernel is not None:
                    session.reopen_later()  # the kernel's part of the tick goes on meanwhile
                    continue
                known = {d.uuid: (d.name, d.tag, d.label, d.interfaces)
                         for d in session.inventory.known()}
                session = Session.open(self.index, self.cfg, self.link, self.guard, known,
                                       session.parked, self.kernel)
                if self.passed(tick, session):
                    return session

    def passed(self, tick: wire.Tick, session: Session) -> bool:
        """Whether ``tick``'s interval ended before libvirtd answered again: nothing was
        read of it then, and what is read now is not stamped with it (the tick is done,
        empty). A worker that connected at its first try replays its ticks as ever."""
        if not session.back_at or tick.ts + self.cfg.interval > session.back_at:
            return False
        if self.skipped_for != session.back_at:
            self.skipped_for = session.back_at
            log.warning("ticks that passed while libvirtd did not answer are not sampled "
                        "late (from %s)", tick.ts)
        self.link.done(tick.ts, 0.0, 0, len(self.guard.outstanding()))
        return True


def worker_main(index: int, cfg: Config, ctl_fd: int, out_fd: int, parent_pid: int,
                seed: Seed | None = None, before: wire.Hello | None = None) -> NoReturn:
    """Entry point after fork: never returns, always ends the process.

    ``seed``: the tags, labels and interfaces the supervisor knows, by uuid; ``before``:
    the hello of the instance's previous worker (None for the first)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Ignored: libvirt's client writes to libvirtd's socket, and a libvirtd that went
        # away (a restart, a crash) must cost a lost connection (EPIPE, a libvirtError), not
        # the worker. A supervisor that went away still ends us: PDEATHSIG below, and
        # EPIPE on our result pipe (BrokenPipeError) or EOF on the control pipe.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        die_with_parent()
        if os.getppid() != parent_pid:
            os._exit(1)
        name = instance_name(index)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(OneLineFormatter(
                f"vpartcollect[%(process)d] {name}: %(levelname)s: %(message)s"))
        quiet_libvirt()
        code = Worker(index, cfg, Link(ctl_fd, out_fd), seed, before).run()
    except (BrokenPipeError, KeyboardInterrupt):
        code = 0
    except wire.WireError as exc:
        log.error("bad control frame from the supervisor: %s", exc)
    except Exception:
        log.exception("worker crashed")
    finally:
        os._exit(code)
