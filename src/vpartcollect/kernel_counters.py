"""The counters libvirtd reads from the kernel for a QEMU domain, parsed the way it parses
them, under the keys and in the units of its bulk stats. Pure: texts in, values out.

What libvirt 9's qemu driver does (qemu_driver.c, util/vircgroupv*.c, virprocess.c,
virnetdevtap.c), and so what these functions do:

- ``cpu.time``, ``cpu.user``, ``cpu.system`` (group cpu-total): the domain's cgroup.
  cgroup v2: ``cpu.stat``'s ``usage_usec``, ``user_usec``, ``system_usec``, times 1000.
  v1: ``cpuacct.usage`` (ns), and ``cpuacct.stat``'s ``user``/``system`` in clock
  ticks times 1e9/CLK_TCK.
- ``vcpu.<n>.time`` (group vcpu): utime + stime of the vCPU's thread
  (/proc/<pid>/task/<tid>/stat), in clock ticks times the integer 1e9/CLK_TCK;
  ``vcpu.<n>.wait``: ``se.statistics.wait_sum`` (or ``se.wait_sum``) of its ``sched``
  file, ms as a float times 1e6, 0 without CONFIG_SCHEDSTATS; ``vcpu.<n>.delay``: the
  second field of its ``schedstat``, 0 without the file; ``vcpu.<n>.state`` always 1
  (running). QEMU names the threads ``CPU <n>/KVM`` (``/TCG`` without KVM).
- ``net.<i>.*`` (group interface): the host-side device's line in /proc/net/dev; for a
  tap (interface types bridge and network) receive and transmit swapped, so that rx is
  what the guest received.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from vpartcollect.samples import Stats

# The bulk groups this module can stand in for.
KERNEL_GROUPS = ("cpu-total", "vcpu", "interface")
_VCPU_THREAD = re.compile(r"CPU (\d+)/(KVM|TCG)$")
_NET_FIELDS = ("rx.bytes", "rx.pkts", "rx.errs", "rx.drop",
               "tx.bytes", "tx.pkts", "tx.errs", "tx.drop")


class Unreadable(ValueError):
    """A kernel file does not have the shape libvirt expects of it."""


# -- where ------------------------------------------------------------------
def cgroup_paths(text: str) -> tuple[str | None, dict[str, str]]:
    """From /proc/<pid>/cgroup: (the v2 path or None, {v1 controller: path})."""
    v2, v1 = None, {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v2, v1


def domain_cgroup(path: str) -> str | None:
    """The domain's own cgroup from the one its QEMU's main thread sits in: libvirt puts
    that thread in an ``emulator`` child of the domain's group (vCPUs in ``vcpu<n>``).
    None for the root: a QEMU libvirt did not place has no group of its own."""
    path = path.rstrip("/")
    if path.endswith("/emulator"):
        path = path[: -len("/emulator")]
    return path or None


def vcpu_number(comm: str) -> int | None:
    """The vCPU a QEMU thread runs, from its name (``CPU 3/KVM`` -> 3), else None."""
    m = _VCPU_THREAD.match(comm.strip())
    return int(m.group(1)) if m else None


# -- cpu-total -------------------------------------------------------------
def cpu_from_v2(cpu_stat: str) -> Stats:
    """``cpu.time``/``user``/``system`` (ns) from a cgroup v2 ``cpu.stat``."""
    fields = _key_values(cpu_stat)
    try:
        return {"cpu.time": fields["usage_usec"] * 1000, "cpu.user": fields["user_usec"] * 1000,
                "cpu.system": fields["system_usec"] * 1000}
    except KeyError as exc:
        raise Unreadable(f"cpu.stat has no {exc.args[0]}") from None


def cpu_from_v1(usage: str, stat: str, clk_tck: int) -> Stats:
    """``cpu.time``/``user``/``system`` (ns) from cgroup v1 ``cpuacct.usage`` and
    ``cpuacct.stat`` (clock ticks scaled as libvirt scales them: a double, truncated)."""
    fields = _key_values(stat)
    try:
        scale = 1e9 / clk_tck
        return {"cpu.time": int(usage.strip()), "cpu.user": int(fields["user"] * scale),
                "cpu.system": int(fields["system"] * scale)}
    except (KeyError, ValueError) as exc:
        raise Unreadable(f"cpuacct: {exc}") from None


def _key_values(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


# -- vcpu ------------------------------------------------------------------
def thread_cpu_ns(stat: str, clk_tck: int) -> int:
    """utime + stime of a /proc/.../stat line in ns, as libvirt converts them."""
    try:
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * (1_000_000_000 // clk_tck)
    except (IndexError, ValueError):
        raise Unreadable("bad stat line") from None


def sched_wait_ns(sched: str | None) -> int:
    """``wait_sum`` of a /proc/.../sched file in ns (0 when the kernel keeps none)."""
    for line in (sched or "").splitlines():
        if line.startswith(("se.statistics.wait_sum", "se.wait_sum")):
            try:
                return int(float(line.split(":", 1)[1]) * 1_000_000)
            except (IndexError, ValueError):
                raise Unreadable(f"bad sched line {line!r}") from None
    return 0


def schedstat_delay_ns(schedstat: str | None) -> int:
    """Time spent waiting on a run queue (second field of schedstat), ns; 0 without it."""
    if schedstat is None:
        return 0
    try:
        return int(schedstat.split()[1])
    except (IndexError, ValueError):
        raise Unreadable("bad schedstat") from None


def vcpu_stats(threads: Mapping[int, tuple[str, str | None, str | None]],
               clk_tck: int) -> Stats:
    """``vcpu.current`` and each vCPU's state, time, wait and delay from its thread's
    (stat, sched, schedstat) texts, keyed by vCPU number."""
    out: Stats = {"vcpu.current": len(threads)}
    for n, (stat, sched, schedstat) in sorted(threads.items()):
        out[f"vcpu.{n}.state"] = 1  # VIR_VCPU_RUNNING: libvirt says nothing else either
        out[f"vcpu.{n}.time"] = thread_cpu_ns(stat, clk_tck)
        out[f"vcpu.{n}.wait"] = sched_wait_ns(sched)
        out[f"vcpu.{n}.delay"] = schedstat_delay_ns(schedstat)
    return out


# -- interface --------------------------------------------------------------
def net_dev(text: str, only: Collection[str] | None = None) -> dict[str, list[int]]:
    """/proc/net/dev as {device: its 16 counters}; with ``only``, just those devices (a
    host with hundreds of taps is read once per domain, so the rest is not parsed)."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if only is not None and name.strip() not in only:
            continue
        fields = rest.split()
        if sep and len(fields) == 16:
            try:
                out[name.strip()] = [int(f) for f in fields]
            except ValueError:
                continue
    return out


def interface_stats(nics: list[tuple[str, bool]], counters: Mapping[str, list[int]]) -> Stats:
    """``net.count`` and ``net.<i>.*`` for the interfaces (host device, is a tap), in the
    domain's order; a device missing from /proc/net/dev gets its name only, as in libvirt."""
    out: Stats = {"net.count": len(nics)}
    for i, (dev, tap) in enumerate(nics):
        if not dev:
            continue  # no host device (not started, or a type without one): counted only
        out[f"net.{i}.name"] = dev
        c = counters.get(dev)
        if c is None:
            continue
        rx, tx = (c[8:12], c[0:4]) if tap else (c[0:4], c[8:12])
        for key, value in zip(_NET_FIELDS, rx + tx, strict=True):
            out[f"net.{i}.{key}"] = value
    return out


# -- agreement ---------------------------------------------------------------
def interface_names(stats: Stats) -> list[str]:
    """The host devices of a domain's interfaces, in libvirt's ``net.<i>`` order ("" for
    one without): what changes when a NIC is plugged or unplugged."""
    count = stats.get("net.count", 0)
    if not isinstance(count, int):
        return []
    return [str(stats.get(f"net.{i}.name", "")) for i in range(count)]


def vcpu_numbers(stats: Stats) -> set[int]:
    """The vCPUs a domain's stats have counters for (``vcpu.<n>.time``): what changes
    when one is plugged or unplugged."""
    out = set()
    for key in stats:
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "vcpu" and parts[2] == "time" and parts[1].isdigit():
            out.add(int(parts[1]))
    return out


def comparable(stats: Stats) -> Stats:
    """The keys of libvirt's answer that this module produces too: the kernel groups,
    without what only QEMU's monitor or libvirtd's own state gives (halt-polling,
    ``vcpu.<n>.halted``, QEMU's own vCPU stats, ``vcpu.maximum``)."""
    out: Stats = {}
    for key, value in stats.items():
        if key in ("cpu.time", "cpu.user", "cpu.system", "vcpu.current", "net.count"):
            out[key] = value
        elif key.startswith("vcpu."):
            parts = key.split(".")
            if len(parts) == 3 and parts[2] in ("state", "time", "wait", "delay"):
                out[key] = value
        elif key.startswith("net."):
            out[key] = value
    return out


def disagreements(kernel: Stats, libvirt: Stats, elapsed: float, cpus: int) -> list[str]:
    """Where the kernel reader's values differ from libvirt's read ``elapsed`` seconds
    earlier by more than can have passed meanwhile (``cpus`` host CPUs); names first."""
    theirs, ours = comparable(libvirt), comparable(kernel)
    problems = [f"{k}: only libvirt has it" for k in sorted(theirs.keys() - ours.keys())]
    problems += [f"{k}: only the kernel reader has it" for k in sorted(ours.keys() - theirs.keys())]
    # Counters only grow; by at most what ``cpus`` CPUs (or a 10 Gb/s link) can do in the
    # time between the two reads, plus a clock tick's rounding.
    slack_ns = (elapsed + 0.02) * 1e9 * cpus
    for key in sorted(theirs.keys() & ours.keys()):
        a, b = theirs[key], ours[key]
        if isinstance(a, str) or isinstance(b, str):
            if a != b:
                problems.append(f"{key}: libvirt {a!r}, kernel {b!r}")
            continue
        if key.endswith((".state", ".current", ".count")):
            ok = a == b
        elif key.startswith("net."):
            ok = a <= b <= a + (elapsed + 0.02) * (1.25e9 if "bytes" in key else 1e6)
        else:
            ok = a - 1e7 <= b <= a + slack_ns  # ns; libvirt's value may round a tick down
        if not ok:
            problems.append(f"{key}: libvirt {a}, kernel {b}")
    return problems
