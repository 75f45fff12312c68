"""1,500 domains: the listing's deadline grows with the work; a respawn starts from the seed."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import cli_popen, no_traceback, parse_lines
from nodes import tagged_node
from test_worker_kills import children

pytestmark = pytest.mark.slow

DOMAINS = 1500


def test_a_big_host_with_a_short_timeout_loses_nothing(tmp_path: Path) -> None:
    uri = tagged_node(tmp_path / "node.xml", [f"virt-{i % 4}" for i in range(DOMAINS)], "vm-")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = cli_popen("run", "--connect", uri, "--instances", "4", "--interval", "1",
                         "--timeout", "0.1", stdout=out, stderr=err)
        try:
            time.sleep(6)
            os.kill(children(proc.pid)[1], signal.SIGKILL)  # from outside, mid-run
            time.sleep(8)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        out.seek(0)
        err.seek(0)
        lines, stderr = parse_lines(out.read()), err.read()
    no_traceback(stderr)
    per_tick: dict[int, set[str]] = defaultdict(set)
    for path, _value, ts in lines:
        if path.endswith(".virt.domain_state.state"):
            per_tick[int(ts)].add(path.split(".")[0])
    ticks = sorted(per_tick)[1:-1]  # whole ticks only
    assert len(ticks) >= 10
    short = {ts: DOMAINS - len(per_tick[ts]) for ts in ticks if len(per_tick[ts]) < DOMAINS}
    assert short == {}, short
    assert "outlived its deadline" not in stderr  # reading 1,500 tags is work, not a hang
    assert "killing worker" not in stderr
