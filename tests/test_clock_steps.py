"""The wall clock steps under a running collector: -1 h and +1 h, then set right again.

On a real host NTP (or ``date -s``) steps CLOCK_REALTIME and leaves CLOCK_MONOTONIC
alone. Stepping the machine's clock would step every other process on it, so the
collector's processes load an LD_PRELOAD shim (tests/clockshim.py, built here with gcc:
a fake, named one) that adds an offset to the wall clock, read from a file this test
writes mid-run. The test driver's cpu time is that same wall clock, so its cpu rate is
1e9 ns/s in every stretch of one clock (tests/oracle.py) and jumps with a step: a rate
across a step would be an hour of cpu over one interval (or nothing, backwards).

What an operator expects, checked against that oracle:
- lines stamped on the new clock within 2 intervals of each step, for every domain;
- every cpu rate within 3 % of the truth (so none across a step);
- no (path, timestamp) written twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import clockshim
import pytest
from nodes import tagged_node
from oracle import TRUTH
from runner import cli_popen, no_traceback

INTERVAL = 1.0
DOMAINS = [f"domain-{c}" for c in "ABCDEF"]
HOUR = 3600.0


@dataclass
class Run:
    """What the collector wrote: (arrival on the test's monotonic clock, line)."""

    lines: list[tuple[float, str, float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def since(self, mono: float) -> list[tuple[float, str, float, float]]:
        with self.lock:
            return [line for line in self.lines if line[0] >= mono]


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clockshim.build(tmp_path_factory.mktemp("clockshim"))


def _read(stream: Iterator[str], run: Run) -> None:
    for text in stream:
        path, value, ts = text.split(" ")
        with run.lock:
            run.lines.append((time.monotonic(), path, float(value), float(ts)))


@dataclass
class Step:
    """One step of the collector's wall clock: when (true wall and monotonic) and to what."""

    true_at: float
    mono_at: float
    offset: float

    @property
    def new_clock(self) -> float:
        """The collector's wall clock at the step."""
        return self.true_at + self.offset

    def stamped_by(self, ts: float) -> bool:
        """Whether a stamp is of the clock this step set, in the seconds after it (the
        other clocks are an hour away)."""
        return self.new_clock - INTERVAL <= ts <= self.new_clock + 6 * INTERVAL


@pytest.mark.slow  # 8-15 s: the full suite runs it, --fast does not
@pytest.mark.parametrize("first", [-HOUR, HOUR], ids=["back-1h", "forward-1h"])
def test_a_step_of_the_wall_clock_and_its_correction(tmp_path: Path, shim: Path,
                                                      first: float) -> None:
    uri = tagged_node(tmp_path / "node.xml", [f"virt-{i % 3}" for i in range(len(DOMAINS))])
    offset_file = tmp_path / "offset"
    clockshim.step(offset_file, 0.0)
    proc = cli_popen("run", "--connect", uri, "--instances", "3", "--interval", str(INTERVAL),
                     env={"LD_PRELOAD": str(shim), "VPC_CLOCK_OFFSET_FILE": str(offset_file)})
    assert proc.stdout is not None and proc.stderr is not None
    run = Run()
    reader = threading.Thread(target=_read, args=(proc.stdout, run), daemon=True)
    reader.start()
    steps = [Step(time.time(), time.monotonic(), 0.0)]
    try:
        time.sleep(3 * INTERVAL)
        for offset in (first, 0.0):  # the step, then the clock set right again
            time.sleep((0.3 - time.time()) % INTERVAL)  # mid-interval: not just at a tick
            clockshim.step(offset_file, offset)
            steps.append(Step(time.time(), time.monotonic(), offset))
            time.sleep(5 * INTERVAL)
    finally:
        stopped = time.monotonic()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        reader.join(timeout=10)
    no_traceback(err)
    assert proc.returncode == 0, err[-3000:]
    said = [line for line in err.splitlines() if "the wall clock stepped" in line]
    assert len(said) == 2, err[-3000:]  # the operator is told, once a step
    print(*said, sep="\n")
    lines = [(p, v, ts) for _, p, v, ts in run.lines]

    report(run, steps, stopped)
    twice = [k for k, n in Counter((p, ts) for p, _, ts in lines).items() if n > 1]
    assert not twice, f"written twice: {twice[:5]}"
    rates = [(p, v, ts) for p, v, ts in lines if p.endswith(".virt.virt_cpu_total")]
    wrong = [(p, v, ts) for p, v, ts in rates if abs(v / TRUTH - 1) > 0.03]
    assert not wrong, f"cpu rates off the truth (a rate across a step?): {wrong[:5]}\n{err[-3000:]}"
    for step in steps[1:]:
        new = on_clock(lines, step)
        for domain in DOMAINS:
            seen = [ts for p, ts in new if p.startswith(f"{domain}.virt.")]
            rated = [ts for p, ts in new if p == f"{domain}.virt.virt_cpu_total"]
            assert seen and min(seen) - step.new_clock <= 2 * INTERVAL, (
                f"step to {step.offset:+.0f} s: {domain} has no line on the new clock within "
                f"2 intervals (stamps {sorted(set(seen))[:5]})\n{err[-3000:]}")
            assert rated and min(rated) - step.new_clock <= 2 * INTERVAL, (
                f"step to {step.offset:+.0f} s: {domain} has no cpu rate on the new clock "
                f"within 2 intervals (stamps {sorted(set(rated))[:5]})\n{err[-3000:]}")
        # Every tick of the new clock after its first two has every domain's cpu rate.
        stamps = sorted({ts for p, ts in new if ".virt." in p})
        for ts in stamps[2:-1]:
            missing = [d for d in DOMAINS if (f"{d}.virt.virt_cpu_total", ts) not in new]
            assert not missing, f"no cpu rate at {ts} for {missing}\n{err[-3000:]}"


def on_clock(lines: list[tuple[str, float, float]], step: Step) -> list[tuple[str, float]]:
    """(path, stamp) of the lines stamped on the clock a step set."""
    return [(p, ts) for p, _, ts in lines if step.stamped_by(ts)]


def report(run: Run, steps: list[Step], stopped: float) -> None:
    """The figures for the README and the issue: how soon the new clock's lines came,
    how far the cpu rates were from the truth."""
    rates = [v / TRUTH - 1 for _, p, v, _ in run.lines if p.endswith(".virt.virt_cpu_total")]
    print(f"\n{len(rates)} cpu rates, worst {max(map(abs, rates), default=0):.2%} off the truth;"
          f" {len(run.lines)} lines")
    ends = [s.mono_at for s in steps[2:]] + [stopped]
    for before, step, end in zip(steps, steps[1:], ends, strict=False):
        after = [line for line in run.since(step.mono_at) if line[0] < end]
        new = [(at, p) for at, p, _, ts in after
               if ".virt." in p and step.stamped_by(ts)]
        old = [ts for _, p, _, ts in after if abs(ts - before.new_clock) < HOUR / 2]
        first = f"{min(new)[0] - step.mono_at:.2f} s after it" if new else "never"
        rated = [at for at, p in new if p.endswith(".virt.virt_cpu_total")]
        every = {p.split(".")[0] for at, p in new if p.endswith(".virt.virt_cpu_total")}
        last_first = (max(min(at for at, p in new if p.startswith(f"{d}.virt.virt_cpu_total"))
                          for d in every) - step.mono_at) if every else None
        cpu = (f"first cpu rate of every domain by {last_first:.2f} s"
               if every == set(DOMAINS) and last_first is not None
               else f"cpu rates of {len(every)} domain(s), {len(rated)} in all")
        print(f"step {step.offset - before.offset:+.0f} s: {len(after)} lines in the "
              f"{end - step.mono_at:.0f} s after it ({len(old)} on the "
              f"old clock); first line on the new clock {first}; {cpu}")
