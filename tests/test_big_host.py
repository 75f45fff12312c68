"""1,500 domains: the listing's deadline grows with the work; a respawn starts from the seed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
from nodes import tagged_node
from runner import children, run_during

pytestmark = pytest.mark.slow

DOMAINS = 1500


def test_a_big_host_with_a_short_timeout_loses_nothing(tmp_path: Path) -> None:
    uri = tagged_node(tmp_path / "node.xml", [f"virt-{i % 4}" for i in range(DOMAINS)], "vm-")

    def kill_one(proc: subprocess.Popen[str]) -> None:
        time.sleep(6)
        os.kill(children(proc.pid)[1], signal.SIGKILL)  # from outside, mid-run
        time.sleep(8)

    lines, stderr, _ = run_during(["run", "--connect", uri, "--instances", "4", "--interval",
                                   "1", "--timeout", "0.1"], kill_one)
    per_tick: dict[int, set[str]] = defaultdict(set)
    for path, _value, ts in lines:
        if path.endswith(".virt.memory-total"):
            per_tick[int(ts)].add(path.split(".")[0])
    ticks = sorted(per_tick)[1:-1]  # whole ticks only
    assert len(ticks) >= 10
    short = {ts: DOMAINS - len(per_tick[ts]) for ts in ticks if len(per_tick[ts]) < DOMAINS}
    assert short == {}, short
    assert "outlived its deadline" not in stderr  # reading 1,500 tags is work, not a hang
    assert "killing worker" not in stderr
