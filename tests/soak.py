"""Running the collector against the private libvirtd while things happen to its VMs.

``soak`` runs the real CLI for a while at a 1 s interval, does timed actions
(freeze, thaw, kill libvirtd ...) and samples libvirtd's busy worker threads;
``Outcome`` is what an operator would see afterwards.
"""

from __future__ import annotations

import bisect
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from harness import PrivateLibvirtd
from runner import cli_popen, no_traceback, parse_lines

SOAK = float(os.environ.get("VPARTCOLLECT_SOAK_SECONDS", "40"))
# What the kernel reader gives while libvirtd does not answer; ``{}``: lab-N's N (its tap
# is ltN).
KERNEL_METRICS = ("virt_cpu_total", "virt_vcpu-0", "if_octets-lt{}.rx", "if_packets-lt{}.tx")

Action = tuple[float, Callable[[], None]]

# cpu rates against /proc (Outcome.cpu_errors): a tick may be off by jitter, a mean by
# no more than 7 %; a rate 0.4x or 1.7x /proc's is outside the per-tick band.
TICK_BAND = (0.6, 1.45)
TICK_SLACK_NS = 1e6  # 1 ms of cpu a second: a monitor call's own cpu, either side of a tick
# A tick's reads land 5-60 ms after it on a quiet host, up to a few hundred ms on a busy
# one; the output does not say when. Per tick, ours is held against /proc's rate over
# every span whose ends lie this late or less after their ticks: the same rate for a
# steady QEMU, a wider range around a burst of its cpu right after a tick.
READ_OFFSETS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
# ...unless the collector says a call of that tick took longer (``Outcome.read_late``):
# r25 read o-14 after a 1.45 s bulk stats call, beside a burst of its cpu (ours 0.24x
# /proc's over the spans above, true over its own).
# The truth is the kernel's count of the domain's cgroup (``CpuTruth``); the sum of its
# QEMU's threads read 100 ms apart drifted 0.947-1.11x from it pooled over 28 QEMUs with
# the suite's other workers on both cores, and failed this. A rate from the tick spacing
# instead of the read times is a per-tick 0.4-1.7x (the band above).
MEAN_TOLERANCE = 0.07
MIN_STEADY_TICKS = 20
# libvirtd's busy workers are read every ~0.25 s: 8 a window of 2 s; fewer than this many
# readings in a window (virt-admin failing) fails the thread count instead of passing it.
MIN_BUSY_SAMPLES = 4


def qemu_cpu_ns(pid: int, seen: dict[str, float]) -> float:
    """CPU time of every thread a process has had, in ns (their schedstat, which the
    kernel keeps to the nanosecond; /proc/<pid>/stat counts 10 ms ticks). ``seen`` keeps
    each thread's last reading: a thread that exited (QEMU's thread-pool workers come and
    go) still counts what it ran, as the domain's cgroup does."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                seen[tid] = float(fh.read().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return sum(seen.values())


def cgroup2_root() -> str | None:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup``, or ``.../unified`` on a hybrid
    host such as this one), from /proc/self/mountinfo; None without it."""
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields, _, fs = line.partition(" - ")
            if fs.split(" ", 1)[0] == "cgroup2":
                return fields.split()[4]
    return None


def qemu_cgroup(pid: int) -> str | None:
    """The cgroup v2 ``cpu.stat`` of the group libvirt made for the QEMU ``pid``: its
    main thread's group is that group's ``emulator`` child (vCPUs in ``vcpu<n>``
    siblings), and every thread of the QEMU is in it. None otherwise (a QEMU libvirt did
    not place: its group holds more than the QEMU)."""
    root = cgroup2_root()
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            main = next((ln.split("::", 1)[1].strip() for ln in fh if ln.startswith("0::")), "")
        if root is None or not main.endswith("/emulator"):
            return None
        group = main[: -len("/emulator")]
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/cgroup") as fh:
                where = next((ln[3:].strip() for ln in fh if ln.startswith("0::")), "")
            if not where.startswith(f"{group}/"):
                return None
        stat = f"{root}{group}/cpu.stat"
        with open(stat) as fh:
            return stat if "usage_usec" in fh.read() else None
    except OSError:
        return None


def cgroup_cpu_ns(stat: str) -> float:
    """``usage_usec`` of a cgroup v2 ``cpu.stat``, in ns (nan once the group is gone)."""
    try:
        with open(stat) as fh:
            for line in fh:
                if line.startswith("usage_usec "):
                    return float(line.split()[1]) * 1000
    except OSError:
        pass
    return float("nan")


class CpuTruth:
    """Each QEMU's cpu time as the kernel counts it, read every 100 ms in a thread: what a
    domain's ``virt_cpu_total`` rate must say, over any window of the run.

    The kernel's count is the domain's cgroup (``qemu_cgroup``) where it has one of its
    own: the sum of QEMU's threads read 100 ms apart misses threads born and gone between
    two reads (QEMU's I/O workers), and drifted 0.95-1.11x from the cgroup on a busy host.
    Else that sum (``qemu_cpu_ns``)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.readings: dict[str, list[tuple[float, float]]] = {d: [] for d in pids}
        self.sources: dict[str, str] = {}  # domain -> "cgroup" or "threads", once running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuTruth:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        threads: dict[str, dict[str, float]] = {d: {} for d in self.pids}
        groups = {d: qemu_cgroup(pid) for d, pid in self.pids.items()}
        self.sources = {d: "cgroup" if g else "threads" for d, g in groups.items()}
        while not self._stop.wait(0.1):
            for domain, pid in self.pids.items():
                stat = groups[domain]
                at = time.time()
                ns = cgroup_cpu_ns(stat) if stat else qemu_cpu_ns(pid, threads[domain])
                if math.isfinite(ns):  # nan: the QEMU or its group is gone
                    self.readings[domain].append((at, ns))

    def at(self, domain: str, ts: float) -> float | None:
        """CPU ns of ``domain`` at wall-clock ``ts``, interpolated; None outside the run."""
        r = self.readings[domain]
        if not r or not r[0][0] <= ts <= r[-1][0]:
            return None
        i = bisect.bisect_left(r, (ts, -1.0))
        (t0, v0), (t1, v1) = r[max(i - 1, 0)], r[i]
        return v0 if t1 == t0 else v0 + (v1 - v0) * (ts - t0) / (t1 - t0)

    def rate(self, domain: str, start: float, end: float) -> float | None:
        """ns of cpu a second over [start, end]."""
        a, b = self.at(domain, start), self.at(domain, end)
        return None if a is None or b is None else (b - a) / (end - start)

    def counter_range(self, domain: str, first: float, last: float) -> tuple[float, float]:
        """The least and most rate a cpu counter stamped ``first`` and ``last`` (its ticks)
        can show over those stamps, each read landing anywhere in ``READ_OFFSETS`` after its
        stamp: /proc's cpu over each such span, divided by ``last - first``."""
        spans = [(b - a) for x in READ_OFFSETS for y in READ_OFFSETS
                 if (a := self.at(domain, first + x)) is not None
                 and (b := self.at(domain, last + y)) is not None]
        assert spans, (domain, first, last)
        return min(spans) / (last - first), max(spans) / (last - first)


@dataclass
class Outcome:
    """What one run wrote, and how busy libvirtd was meanwhile."""

    lines: list[tuple[str, float, float]]
    stderr: str
    busy: list[tuple[float, int]]  # (seconds since start, busy libvirtd workers above baseline)
    started: float
    events: dict[str, float] = field(default_factory=dict)  # name -> wall time
    truth: CpuTruth | None = None
    interval: float = 1.0
    probe_failures: list[tuple[float, str]] = field(default_factory=list)

    def stamps(self, domain: str, metric: str) -> set[int]:
        """Timestamps at which ``<domain>.virt.<metric>`` was written."""
        path = f"{domain}.virt.{metric}"
        return {int(ts) for p, _, ts in self.lines if p == path}

    def gaps(self, domains: Iterable[str], metrics: Iterable[str],
             ticks: Iterable[int] | None = None) -> dict[str, list[int]]:
        """{"<domain> <metric>": ticks it is missing at}, over ``ticks`` (else the window);
        a metric's ``{}`` is the domain's number (lab-3: ``if_octets-lt3.rx``)."""
        when = list(self.window() if ticks is None else ticks)
        missing = {}
        for name in domains:
            for metric in metrics:
                metric = metric.format(name[-1])
                stamps = self.stamps(name, metric)
                if gaps := [t for t in when if t not in stamps]:
                    missing[f"{name} {metric}"] = gaps
        return missing

    def values(self, domain: str, metric: str) -> dict[int, float]:
        path = f"{domain}.virt.{metric}"
        return {int(ts): v for p, v, ts in self.lines if p == path}

    def _blocked(self) -> Iterator[tuple[int, int]]:
        """(instance, its ``vpartcollect-virt-N.blocked_calls`` value) of every tick."""
        for path, value, _ in self.lines:
            if path.endswith(".blocked_calls") and ".vpartcollect-virt-" in path:
                yield int(path.rsplit(".vpartcollect-virt-", 1)[1].split(".")[0]), int(value)

    def blocked_calls(self) -> dict[int, int]:
        """The most calls each instance said it had left blocked in libvirtd, by instance
        (its own ``vpartcollect-virt-N.blocked_calls`` metric)."""
        worst: dict[int, int] = {}
        for n, value in self._blocked():
            worst[n] = max(worst.get(n, 0), value)
        return worst

    def blocked_ticks(self) -> dict[int, int]:
        """How many ticks each instance ended with a call of its own left blocked in
        libvirtd, by instance (ticks whose ``blocked_calls`` was not 0)."""
        ticks: dict[int, int] = {}
        for n, value in self._blocked():
            ticks[n] = ticks.get(n, 0) + (value > 0)
        return ticks

    def window(self) -> range:
        """Every tick from the second to the last-but-one (the first and last may be cut)."""
        stamps = sorted({int(ts) for _, _, ts in self.lines})
        return range(stamps[1], stamps[-1])

    def steady_cpu(self, domains: list[str], events: Iterable[float] = (),
                   settle: float = 0.0) -> list[tuple[str, int, float, float]]:
        """(domain, tick, our virt_cpu_total, /proc's over the tick's interval) for every
        steady tick: not each domain's first rate (its span starts at the domain's first
        read, which start-up puts late in its tick), and not within two intervals of an
        event (a freeze, a thaw): a VM's cpu jumps there, and a read a few hundred ms
        after its tick (after a call that hung) is true over its own span, which /proc
        cannot be lined up with from the output. ``settle``: seconds after an event left
        out, if more than two intervals."""
        assert self.truth is not None
        near = list(events)
        settle = max(2 * self.interval, settle)
        rows = []
        for domain in domains:
            for ts, ours in sorted(self.values(domain, "virt_cpu_total").items())[1:]:
                if any(-2 * self.interval <= ts - e <= settle for e in near):
                    continue
                truth = self.truth.rate(domain, ts - self.interval + 0.02, ts + 0.02)
                if truth is not None:
                    rows.append((domain, ts, ours, truth))
        return rows

    def read_late(self) -> dict[int, float]:
        """Per tick, the latest its reads may land: the slowest instance's sum of its
        slowest libvirtd call of each kind that tick (its own
        ``vpartcollect-virt-N.libvirtd_seconds-<kind>_max``; a domain's values are read
        after its tick's calls). Ticks with no such lines are not in it. A bound only
        where each kind is called once a tick: a run with chunks smaller than its
        instances' domains (``--chunk-size``) makes several stats calls, and a late
        chunk's domains may be read later still; the slowest instance's sum is also
        held against every instance's domains."""
        sums: dict[tuple[int, int], float] = {}
        for path, value, ts in self.lines:
            _, sep, tail = path.partition(".vpartcollect-virt-")
            n, _, metric = tail.partition(".")
            if sep and metric.startswith("libvirtd_seconds-") and metric.endswith("_max"):
                sums[int(ts), int(n)] = sums.get((int(ts), int(n)), 0.0) + value
        late: dict[int, float] = {}
        for (ts, _), seconds in sums.items():
            late[ts] = max(late.get(ts, 0.0), seconds)
        return late

    def tick_range(self, domain: str, ts: int,
                   late: dict[int, float] | None = None) -> tuple[float, float]:
        """The least and most /proc's rate for ``domain`` over the tick before ``ts`` can
        be, its two reads landing anywhere in ``READ_OFFSETS`` after their ticks, or up
        to ``late`` (``read_late``) seconds and 50 ms after a tick whose calls were
        slower."""
        assert self.truth is not None

        def offsets(tick: float) -> tuple[float, ...]:
            most = (late or {}).get(int(tick), 0.0) + 0.05
            if most <= READ_OFFSETS[-1]:
                return READ_OFFSETS
            return (*READ_OFFSETS, most / 2, 3 * most / 4, most)

        rates = [r for a in offsets(ts - self.interval) for b in offsets(ts)
                 if (r := self.truth.rate(domain, ts - self.interval + a, ts + b)) is not None]
        return min(rates), max(rates)

    def cpu_errors(self, domains: list[str], events: Iterable[float] = (),
                   settle: float = 0.0) -> list[tuple[str, int, float, float]]:
        """Where our virt_cpu_total disagrees with /proc's account of each QEMU.

        Two checks. Per tick, jitter between two reads is real (reads land 5-60 ms
        after a tick, a few hundred on a busy host, and a monitor call's own cpu falls
        either side of it), so a tick is wrong only outside ``TICK_BAND`` of /proc's
        rate over the spans its reads can have had (``tick_range``), widened by
        ``TICK_SLACK_NS``:
        a late answer rated from when it was handed on, not read, was 0.4-1.7x the truth,
        and fails it. A bias is not jitter: over the steady ticks the sums of ours and
        of /proc's must agree within ``MEAN_TOLERANCE``, for each domain with at least
        ``MIN_STEADY_TICKS`` of them and for all of them pooled (there are too few
        steady ticks for a check of the mean: AssertionError). A mean off is reported
        as (domain or "all", -1, our mean, /proc's)."""
        rows = self.steady_cpu(domains, events, settle)
        lo, hi = TICK_BAND
        wrong = []
        late = self.read_late()
        for d, ts, ours, truth in rows:
            least, most = self.tick_range(d, ts, late)
            if not lo * least - TICK_SLACK_NS <= ours <= hi * most + TICK_SLACK_NS:
                wrong.append((d, ts, ours, truth))
        assert len(rows) >= MIN_STEADY_TICKS, (
            f"{len(rows)} steady ticks of cpu: a mean needs {MIN_STEADY_TICKS}")
        groups: dict[str, list[tuple[float, float]]] = {"all": []}
        for d, _, ours, truth in rows:
            groups.setdefault(d, []).append((ours, truth))
            groups["all"].append((ours, truth))
        for name, pairs in groups.items():
            if len(pairs) < MIN_STEADY_TICKS:
                continue
            ours_mean = sum(o for o, _ in pairs) / len(pairs)
            truth_mean = sum(t for _, t in pairs) / len(pairs)
            if abs(ours_mean - truth_mean) > MEAN_TOLERANCE * truth_mean:
                wrong.append((name, -1, ours_mean, truth_mean))
        ratios = sorted(o / t for _, _, o, t in rows if t > 0)
        assert self.truth is not None
        used = [self.truth.sources.get(d, "?") for d in domains]
        counts = ", ".join(f"{used.count(u)} {u}" for u in sorted(set(used)))
        print(f"cpu vs the kernel ({counts}): "
              f"{len(rows)} steady ticks, ratio min {ratios[0]:.2f} "
              f"median {ratios[len(ratios) // 2]:.2f} max {ratios[-1]:.2f}")
        return wrong

    def assert_cpu_true(self, domains: list[str], events: Iterable[float] = (),
                        settle: float = 0.0) -> None:
        """Fail, naming the first wrong ticks and the collector's log, where ``cpu_errors``
        finds our virt_cpu_total off the kernel's account of the QEMUs."""
        wrong = self.cpu_errors(domains, events, settle)
        assert not wrong, (f"cpu rates off the kernel's (domain, tick, ours, kernel; tick -1:"
                           f" a mean): {wrong[:5]}\nlog:\n{self.stderr[-3000:]}")

    def held_threads(self, start: float, end: float) -> int:
        """Most libvirtd workers held throughout any 2 s between start and end.

        A single reading also counts requests that happen to be in flight; a thread
        held by a hung call stays busy across the whole window. Every window must have
        ``MIN_BUSY_SAMPLES`` readings (a failed virt-admin probe is none): a count of 0
        from no readings would pass any ``== 0``.
        """
        worst = 0
        t = start
        while t + 2 <= end:
            inside = [b for at, b in self.busy if t <= at < t + 2]
            assert len(inside) >= MIN_BUSY_SAMPLES, (
                f"{len(inside)} readings of libvirtd's workers in [{t:.1f}, {t + 2:.1f}) s, "
                f"need {MIN_BUSY_SAMPLES}; failed probes: {self.probe_failures[:3]}")
            worst = max(worst, min(inside))
            t += 0.5
        return worst


def soak(libvirtd: PrivateLibvirtd, args: list[str], actions: list[Action],
         seconds: float = SOAK) -> Outcome:
    """Run the collector for ``seconds``, doing ``actions`` at their offsets."""
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        return _soak(libvirtd, args, actions, seconds, out_file, err_file)


def _soak(libvirtd: PrivateLibvirtd, args: list[str], actions: list[Action], seconds: float,
          out_file: IO[str], err_file: IO[str]) -> Outcome:
    pids = {n: libvirtd.qemu_pid(n) for n in libvirtd.domains}
    with CpuTruth(pids) as truth:
        out = _run(libvirtd, args, actions, seconds, out_file, err_file)
    out.truth = truth
    if "--interval" in args:
        out.interval = float(args[args.index("--interval") + 1])
    return out


def _run(libvirtd: PrivateLibvirtd, args: list[str], actions: list[Action], seconds: float,
         out_file: IO[str], err_file: IO[str]) -> Outcome:
    baseline = libvirtd.busy_workers()
    # disk_capacity: a value only QEMU's monitor gives (a healthy VM has it at every tick).
    extra = [] if "--extra-stats" in args else ["--extra-stats", "disk_capacity domain_state"]
    proc = cli_popen("run", "--connect", libvirtd.uri, "--interval", "1", *extra, *args,
                     stdout=out_file, stderr=err_file)
    started = time.monotonic()
    busy: list[tuple[float, int]] = []
    failures: list[tuple[float, str]] = []
    todo = sorted(actions, key=lambda a: a[0])
    try:
        while (now := time.monotonic() - started) < seconds:
            while todo and todo[0][0] <= now:
                todo.pop(0)[1]()
            try:
                busy.append((now, libvirtd.busy_workers() - baseline))
            except Exception as exc:  # libvirtd down in the restart scenario
                failures.append((now, str(exc)[:200]))  # held_threads needs readings
            time.sleep(0.2)
        for _, action in todo:
            action()
        assert proc.poll() is None, "the collector exited on its own"
    finally:
        for name in list(libvirtd.frozen):
            libvirtd.thaw(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    assert proc.returncode == 0, err
    no_traceback(err)
    return Outcome(parse_lines(out), err, busy, started, probe_failures=failures)


def freeze(libvirtd: PrivateLibvirtd, name: str, events: dict[str, float],
           between_cycles: bool = True) -> Callable[[], None]:
    """SIGSTOP ``name``'s QEMU; ``between_cycles``: half-way between two 1 s ticks.

    A cycle asks libvirt for 20-60 ms after each tick (measured on this 2-core
    machine), so a freeze at a random moment lands in a call in flight 2-6 % of the
    time, and that call stays in libvirtd until the thaw: no collector can avoid
    it, and the scenarios that assert nothing was left blocked would fail by luck.
    Those freeze half-way between ticks; test_vm_freezing_mid_cycle_again_and_again
    freezes at every phase on purpose."""
    def act() -> None:
        if between_cycles:
            time.sleep((0.5 - time.time() % 1.0) % 1.0)
        events[f"freeze {name}"] = events[f"freeze {name} at {time.time()}"] = time.time()
        libvirtd.freeze(name)
    return act


def thaw(libvirtd: PrivateLibvirtd, name: str, events: dict[str, float]) -> Callable[[], None]:
    def act() -> None:
        events[f"thaw {name}"] = events[f"thaw {name} at {time.time()}"] = time.time()
        libvirtd.thaw(name)
    return act
