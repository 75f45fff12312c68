"""A SIGHUP with a configuration that cannot work is one line in the log; the running
configuration is kept and every tick written; ``check-config`` and ``run`` say the same
about that file."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from listener import Listener
from runner import DEMO_NODE, DEMO_URI, cli, cli_popen, no_traceback, parse_lines

INTERVAL = 0.5


def good(uri: str, port: int, spool: Path, **changes: str) -> str:
    keys = {"connect": f'"{uri}"', "interval": str(INTERVAL), "stdout": "true",
            "graphite": f'["127.0.0.1:{port}"]', "spool_dir": f'"{spool}"',
            "include": '["."]', "instances": "2", **changes}
    return "".join(f"{k} = {v}\n" for k, v in keys.items())


def bad_configs(tmp_path: Path, port: int, spool: Path) -> dict[str, str]:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return {
        "unopenable URI": good("nosuchdriver:///x", port, spool),
        "unusable spool_dir": good(DEMO_URI, port, blocker / "spool"),
        "nested TOML": good(DEMO_URI, port, spool) + "x = " + "[" * 500 + "]" * 500 + "\n",
        "bad regex": good(DEMO_URI, port, spool, include='["("]'),
        "wrong type": good(DEMO_URI, port, spool, instances='"4"'),
    }


@pytest.mark.slow  # 8-15 s: the full suite runs it, --fast does not
def test_bad_reloads_keep_the_running_configuration(tmp_path: Path) -> None:
    listener = Listener()
    spool = tmp_path / "spool"
    conf = tmp_path / "c.toml"
    conf.write_text(good(DEMO_URI, listener.port, spool))
    bad = bad_configs(tmp_path, listener.port, spool)
    logged: dict[str, list[str]] = {}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = cli_popen("run", "-c", str(conf), "--log-level", "warning", stdout=out,
                         stderr=err)
        try:
            time.sleep(3)
            for case, text in bad.items():
                before = err.tell(), len(err.read())
                conf.write_text(text)
                proc.send_signal(signal.SIGHUP)
                time.sleep(2)
                err.seek(before[0])
                logged[case] = err.read().splitlines()
                assert proc.poll() is None, case
            # And a good one still applies, a new URI included (opened first, then used).
            copy = tmp_path / "node-copy.xml"
            copy.write_text(DEMO_NODE.read_text())
            conf.write_text(good(f"test://{copy}", listener.port, spool, instances="3"))
            proc.send_signal(signal.SIGHUP)
            time.sleep(2.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        out.seek(0)
        err.seek(0)
        lines, stderr = parse_lines(out.read()), err.read()
    no_traceback(stderr)
    assert proc.returncode == 0, stderr
    for case, got in logged.items():
        print(f"{case}: {got}")
        assert len(got) == 1 and "keeping the running configuration" in got[0], (case, got)
    # Every tick of the run, every domain, once: the running configuration went on.
    samples = Counter((p.split(".")[0], ts) for p, _, ts in lines
                      if p.endswith(".virt.memory-total"))
    domains = {d for d, _ in samples}
    ticks = sorted({ts for _, ts in samples})
    expected = [ticks[0] + k * INTERVAL for k in range(round((ticks[-1] - ticks[0]) / INTERVAL))]
    assert len(domains) >= 5 and len(expected) >= 20
    missing = [(d, ts) for ts in expected for d in domains if samples[(d, ts)] != 1]
    assert missing == []
    assert set(listener.ticks()) >= {int(ts) for ts in expected}  # Graphite had them all
    assert "virt-2" in "".join(p for p, _, _ in lines[-200:])  # the good reload applied


def test_check_config_agrees_with_run_on_each(tmp_path: Path) -> None:
    spool = tmp_path / "new" / "spool"
    cases = bad_configs(tmp_path, 9, spool)
    checked = {}
    for case, text in cases.items():
        conf = tmp_path / f"{case}.toml"
        conf.write_text(text)
        checked[case] = cli("check-config", "-c", str(conf))
    assert not (tmp_path / "new").exists()  # check-config made nothing
    for case in cases:
        ran = subprocess.run(["timeout", "60", *cli_args("run", "--once", "-c",
                                                         str(tmp_path / f"{case}.toml"))],
                             capture_output=True, text=True, check=False)
        for proc in (checked[case], ran):
            no_traceback(proc.stderr)
            assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, \
                (case, proc.stderr)
        print(f"{case}: {ran.stderr.strip()}")
        assert checked[case].stderr == ran.stderr, case


def cli_args(*args: str) -> list[str]:
    import sys
    return [sys.executable, "-m", "vpartcollect", *args]
