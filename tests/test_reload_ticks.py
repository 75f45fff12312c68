"""A reload that replaces the workers loses no tick of any domain and writes none twice.

SIGHUPs at random phases of a tick change ``instances`` 1 -> 4 -> 1 -> 3 and
``include`` (every variant keeps every domain, so the oracle is simple: each
domain, each tick, exactly one sample). Domains move between partitions at each
change of ``instances``; the old worker of a domain may be in the middle of the
tick when the new rule arrives.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import PrivateLibvirtd
from nodes import tagged_node
from runner import run_during

INSTANCES = [1, 4, 1, 3]
INCLUDES = ["[]", '["^vm-", "^lab-"]', '["."]']  # each keeps every domain
RELOADS = 20


def conf_text(uri: str, interval: float, step: int) -> str:
    """The configuration of reload ``step`` (0: the one the run starts with)."""
    return (f'connect = "{uri}"\ninterval = {interval}\ninstances = {INSTANCES[step % 4]}\n'
            f'include = {INCLUDES[step % 3]}\nkernel_reader = false\n')


def reload_at_random_phases(conf: Path, uri: str, interval: float, seed: int,
                            window: float = 0.5,
                            ) -> tuple[list[tuple[str, float, float]], str, list[float]]:
    """Run; SIGHUP RELOADS times, each at a random phase of the first half of a tick
    (3,000 test-driver domains take 0.6-0.8 s of a tick with one instance: a SIGHUP
    later than that finds every worker idle)."""
    rng = random.Random(seed)
    conf.write_text(conf_text(uri, interval, 0))

    def reload(proc: subprocess.Popen[str]) -> list[float]:
        time.sleep(3 * interval)
        phases = []
        for step in range(1, RELOADS + 1):
            now = time.time()
            phase = rng.uniform(0.02, window) * interval
            time.sleep((now // interval + 1) * interval + phase - now)
            conf.write_text(conf_text(uri, interval, step))
            proc.send_signal(signal.SIGHUP)
            phases.append(phase / interval)
            time.sleep(rng.uniform(0, interval))
        time.sleep(3 * interval)
        return phases

    return run_during(["run", "-c", str(conf)], reload)


def tick_account(lines: list[tuple[str, float, float]], domains: set[str], interval: float,
                 ) -> tuple[int, dict[float, int], int]:
    """(ticks checked, missing samples by tick, samples written twice) over every tick
    between the first and the last written (the last one may be cut by the stop)."""
    samples = Counter((p.split(".")[0], ts) for p, _, ts in lines
                      if p.endswith(".virt.memory-total"))
    ticks = sorted({ts for _, ts in samples})
    first, last = ticks[0], ticks[-1]
    expected = [round(first + k * interval, 6) for k in range(round((last - first) / interval))]
    missing = {ts: sum(1 for d in domains if (d, ts) not in samples) for ts in expected}
    twice = sum(1 for n in samples.values() if n > 1)
    return len(expected), {ts: n for ts, n in missing.items() if n}, twice


def check(lines: list[tuple[str, float, float]], stderr: str, domains: set[str],
          interval: float, phases: list[float]) -> None:
    ticks, missing, twice = tick_account(lines, domains, interval)
    reloaded = stderr.count("configuration reloaded")
    print(f"{len(domains)} domains, {ticks} ticks, {reloaded} reloads at phases "
          f"{[round(p, 2) for p in phases]}: {sum(missing.values())} samples missing "
          f"over {len(missing)} tick(s) {missing}; {twice} written twice")
    assert reloaded == RELOADS, stderr[-3000:]
    assert ticks >= RELOADS
    assert missing == {} and twice == 0


@pytest.mark.slow
def test_reloads_at_random_phases_3000_test_domains(tmp_path: Path) -> None:
    domains = 3000
    uri = tagged_node(tmp_path / "node.xml", [f"virt-{i % 4}" for i in range(domains)], "vm-")
    interval = 2.0
    lines, stderr, phases = reload_at_random_phases(tmp_path / "c.toml", uri, interval, 29)
    check(lines, stderr, {f"vm-{i:04d}" for i in range(domains)}, interval, phases)


@pytest.mark.libvirtd
def test_reloads_at_random_phases_real_qemu(libvirtd: PrivateLibvirtd, tmp_path: Path) -> None:
    interval = 1.0
    # Six QEMU domains take a tenth of a second of each tick: SIGHUPs inside it.
    lines, stderr, phases = reload_at_random_phases(tmp_path / "c.toml", libvirtd.uri,
                                                    interval, 30, window=0.12)
    check(lines, stderr, set(libvirtd.domains), interval, phases)
