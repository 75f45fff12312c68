"""False positives of the /proc frozen check on healthy QEMUs doing disk I/O (real QEMU, root).

    .venv/bin/python bench/false_frozen.py [--domains 4] [--seconds 60] [--mib 256]

A worker judges a domain frozen when QEMU's main thread is stopped (T), in
uninterruptible sleep (D) or asleep on a filesystem request, on two reads 30 ms
apart (qemu_proc.py). Normal disk I/O can put the main thread in D for a moment;
this measures how often, and whether the second read filters it out. No guest
OS is needed for I/O: each domain copies its data disk (``virsh blockcopy``, a
mirror job QEMU's main loop drives) over and over at full speed, half of them
with ``io='native' cache='none'`` (Linux AIO submitted from the main thread, the
setting most prone to D-state), while ``dd`` with O_DIRECT and fsync keeps the
host's disk busy. Every 100 ms each main thread is checked exactly as a worker
checks it. Prints the first-read hits, the domains flagged (stuck and never
scheduled for as long as qemu_proc.stuck_for says, at most ``--longest``), and
the rate of false flags per check.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import REPO  # noqa: F401  (puts tests/ on the path)
from harness import PrivateLibvirtd

from vpartcollect.worker.qemu_proc import IO_WAIT_SECONDS, QemuProcesses, looks_frozen, thread_state


def copy_loop(daemon: PrivateLibvirtd, name: str, dest: Path, stop: threading.Event,
              copied: list[int], mib: int) -> None:
    """Mirror the domain's vdb to ``dest`` again and again until ``stop``."""
    while not stop.is_set():
        dest.unlink(missing_ok=True)
        res = subprocess.run(["virsh", "-c", daemon.uri, "blockcopy", name, "vdb", str(dest),
                              "--wait", "--finish", "--transient-job", "--format", "raw"],
                             capture_output=True, text=True, check=False)
        if res.returncode == 0:
            copied.append(mib)
        else:
            print(f"{name}: blockcopy failed: {res.stderr.strip()}")
            stop.wait(1)


def host_pressure(where: Path, stop: threading.Event) -> None:
    """O_DIRECT writes with fsync on the images' filesystem, until ``stop``."""
    target = where / "pressure.bin"
    while not stop.is_set():
        subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=256",
                        "oflag=direct", "conv=fsync"], capture_output=True, check=False)
    target.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--mib", type=int, default=256, help="size of each data disk")
    parser.add_argument("--longest", type=float, default=IO_WAIT_SECONDS,
                        help="the longest a thread must stay stuck and unscheduled")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        base = Path(tmp)
        daemon = PrivateLibvirtd(base / "libvirtd").start()
        stop = threading.Event()
        copied: list[int] = []
        threads: list[threading.Thread] = []
        try:
            names = [f"io-{i}" for i in range(args.domains)]
            for i, name in enumerate(names):
                data = base / f"{name}-data.raw"
                subprocess.run(["dd", "if=/dev/urandom", f"of={data}", "bs=1M",
                                f"count={args.mib}"], capture_output=True, check=True)
                driver = " io='native' cache='none'" if i % 2 else ""
                daemon.create(name, f"virt-{i % 4}", nic=f"fz{i}",
                              extra_disks=[("vdb", "raw", data)], extra_driver=driver)
            qemu = QemuProcesses(pid_dir=daemon.base / "run" / "qemu", longest=args.longest)
            uuids = {}
            for name in names:
                out = subprocess.run(["virsh", "-c", daemon.uri, "domuuid", name],
                                     capture_output=True, text=True, check=True)
                uuids[name] = out.stdout.strip()
            for name in names:
                threads.append(threading.Thread(
                    target=copy_loop, args=(daemon, name, base / f"{name}-copy.raw", stop,
                                            copied, args.mib), daemon=True))
            threads.append(threading.Thread(target=host_pressure, args=(base, stop),
                                            daemon=True))
            for t in threads:
                t.start()
            time.sleep(2)
            states: collections.Counter[str] = collections.Counter()
            first_hits: collections.Counter[str] = collections.Counter()
            checks = flagged = 0
            flagged_by: collections.Counter[str] = collections.Counter()
            started = time.monotonic()
            end = started + args.seconds
            while time.monotonic() < end:
                for name in names:
                    pid = qemu.pid(uuids[name], name)
                    if pid is None:
                        continue
                    task = Path(f"/proc/{pid}/task/{pid}")
                    state = thread_state((task / "stat").read_text())
                    wchan = (task / "wchan").read_text()
                    states[state] += 1
                    if looks_frozen(state, wchan):
                        first_hits[f"{state} {wchan}"] += 1
                    checks += 1
                    if qemu.frozen([(uuids[name], name)]):
                        flagged += 1
                        flagged_by[name] += 1
                time.sleep(0.1)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
            daemon.stop()
    print(f"{args.domains} QEMU domains ({daemon.kind}) copying a {args.mib} MiB disk over and "
          f"over (half io=native cache=none), dd O_DIRECT+fsync beside them, {elapsed:.0f} s")
    print(f"copied {sum(copied)} MiB ({sum(copied) / elapsed:.0f} MiB/s in all)")
    print(f"main-thread states seen: {dict(states)}")
    hits = sum(first_hits.values())
    print(f"first read looked frozen: {hits} of {checks} ({hits / max(checks, 1):.2%})"
          + (f": {dict(first_hits)}" if hits else ""))
    print(f"flagged frozen (stuck, never scheduled, up to {args.longest * 1000:.0f} ms): {flagged} "
          f"of {checks} checks = false-positive rate {flagged / max(checks, 1):.3%}"
          + (f" ({dict(flagged_by)}; odd io-N use io=native)" if flagged else ""))


if __name__ == "__main__":
    main()
