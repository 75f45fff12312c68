"""Random worker frames through a real pipe into the real supervisor: it never exits, a
frame it cannot use costs the worker that sent it, and every JSON line it writes parses.

Instance 1's worker is a FAKE (a real worker sends only what libvirt gave it; the fake
sends, seeded, what a broken or hostile one could: any key, any value msgpack carries,
within the wire's bounds and past them). Instance 0 is a real worker on the test driver
and must lose no tick while its neighbour is killed again and again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import msgpack
import pytest
from nodes import tagged_node

from vpartcollect import supervisor
from vpartcollect.config import build
from vpartcollect.supervisor import Supervisor
from vpartcollect.worker import worker_main
from vpartcollect.worker.link import Link

EXTRA = ("disk pcpu cpu_util domain_state perf vcpupin disk_err job_stats_completed "
         "disk_allocation disk_capacity disk_physical memory vcpu")
KEYS = ["state.state", "cpu.time", "cpu.user", "cpu.system", "balloon.current",
        "balloon.rss", "balloon.swap_in", "balloon.minor_fault", "vcpu.current", "vcpu.0.time",
        "vcpu.1.time", "vcpu.0.pin.1", "block.count", "block.0.name", "block.0.source",
        "block.0.rd.bytes", "block.0.fl.times", "block.0.allocation", "net.count",
        "net.0.name", "net.0.rx.bytes", "net.0.number", "perf.cmt", "disk_error.vda",
        "job.data_total"]


def random_key(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind < 2:
        return rng.choice(KEYS)
    if kind == 2:  # vCPU numbers of any length (int() refuses more than 4300 digits)
        digits = rng.choice([1, 9, 10, 40, 250, 5000])
        return f"vcpu.{'7' * digits}.pin.{rng.randrange(4)}"
    if kind == 3:
        return rng.choice(["perf.", "job.", "disk_error.", "vcpu.", "block.0."]) + "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
            for _ in range(rng.randrange(1, 12)))
    if kind == 4:
        return "".join(chr(rng.randrange(1, 0xD7FF)) for _ in range(rng.randrange(0, 300)))
    return rng.choice(["", "." * 10, "x" * 257, "block.99999999999.name"])


def random_value(rng: random.Random) -> Any:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.choice([0, 1, 3, 4096, 2**63 - 1, -(2**63), 2**64 - 1, -1])
    if kind == 1:
        return rng.choice([1e306, -1e306, 1.7e308, -1.7e308, math.inf, -math.inf, math.nan,
                           5e-324, -0.0])
    if kind == 2:
        return rng.uniform(-1e18, 1e18)
    if kind == 3:
        return rng.choice(["vda", "", "a\nb", "/img/x.qcow2", "x" * 5000, "é"])
    return rng.randrange(0, 10**12)


def random_results(rng: random.Random, tick: float) -> list[Any]:
    rows = []
    for _ in range(rng.randrange(1, 8)):
        stats = {random_key(rng): random_value(rng) for _ in range(rng.randrange(1, 25))}
        stats["state.state"] = rng.choice([1, 1, 1, 5])
        n = rng.randrange(50)
        rows.append([f"fuzz-{n}", rng.choice([f"fz-{n}", "fz\n-\u00e9", "x" * 5000]),
                     rng.choice([None, "virt-1", "virt-\u00b2"]), rng.random() < 0.1, stats,
                     rng.choice([time.time(), time.time() + 1e6, 1e300, -5.0]),
                     rng.choice([None, "lbl", ""])])
    stamp = tick if rng.random() < 0.9 else rng.choice([tick + 1, 1e300, -1.0])
    return ["results", stamp, rows]


def fake_fuzzing_worker(index: int, cfg: object, ctl_fd: int, out_fd: int, parent: int,
                        seed: object = None, before: object = None) -> NoReturn:
    """FAKE worker (instance 1): hello, then random Results for each tick, then done."""
    rng = random.Random(os.getpid())
    link = Link(ctl_fd, out_fd)
    try:
        link.hello(index, 2, "fake", ["state"], [])
        while (tick := link.next_tick()) is not None:
            for _ in range(rng.randrange(1, 4)):
                os.write(out_fd, msgpack.packb(random_results(rng, tick.ts), use_bin_type=True))
            link.done(tick.ts, 0.01, 1, 0)
    except OSError:
        pass
    os._exit(0)


def real_or_fake(index: int, cfg: Any, ctl_fd: int, out_fd: int, parent: int,
                 seed: Any = None, before: Any = None) -> NoReturn:
    if index == 1:
        fake_fuzzing_worker(index, cfg, ctl_fd, out_fd, parent, seed, before)
    worker_main(index, cfg, ctl_fd, out_fd, parent, seed, before)


def strict_json(line: str) -> dict[str, Any]:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")
    obj: dict[str, Any] = json.loads(line, parse_constant=refuse)
    return obj


@pytest.mark.slow  # 8-15 s: the full suite runs it, --fast does not
def test_fuzzed_frames_cost_their_worker_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    domains = 20
    uri = tagged_node(tmp_path / "node.xml", [None] * domains, "vm-")  # all on virt-0
    monkeypatch.setattr(supervisor, "worker_main", real_or_fake)
    caplog.set_level(logging.INFO)
    cfg = build({"connect": uri, "instances": 2, "interval": 0.5, "format": "json",
                 "extra_stats": EXTRA})
    with tempfile.TemporaryFile("w+") as out:
        with monkeypatch.context() as m:  # the stdout sink it makes writes to the file
            m.setattr(sys, "stdout", out)
            sup = Supervisor(cfg)
        timer = threading.Timer(12.0, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        try:
            code = sup.run()  # a frame that escaped the guards would raise out of here
        finally:
            timer.cancel()
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        out.seek(0)
        text = out.read()
    assert code == 0
    objects = [strict_json(line) for line in text.splitlines()]
    assert all(isinstance(o["value"], int | float) and math.isfinite(o["value"])
               for o in objects)
    refused = [r.message for r in caplog.records
               if "cannot use" in r.message or "bad frame" in r.message]
    print(f"{len(objects)} JSON lines; {len(refused)} frames refused; worker 1 started "
          f"{sup.slots[1].spawned} times, worker 0 {sup.slots[0].spawned}")
    assert refused and all("virt-1" in m for m in refused)
    assert sup.slots[1].spawned >= 3 and sup.slots[0].spawned == 1
    # The real instance lost nothing meanwhile: every domain at every whole tick, once.
    seen = Counter((o["domain"], o["timestamp"]) for o in objects
                   if o["path"].endswith(".virt.memory-total") and o["domain"].startswith("vm-"))
    ticks = sorted({ts for _, ts in seen})[:-1]
    assert len(ticks) >= 15
    assert all(seen[(f"vm-{chr(65 + i)}", ts)] == 1 for i in range(domains) for ts in ticks)
