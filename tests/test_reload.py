"""SIGHUP: what a reload keeps (queued Graphite lines) and what it applies (every key)."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path

from conftest import cli_popen, no_traceback, parse_lines
from nodes import domain_xml, write_node

from vpartcollect.config import build
from vpartcollect.metrics import Metric
from vpartcollect.supervisor import Supervisor


def test_reload_keeps_queued_graphite_lines_when_bounds_change() -> None:
    cfg = build({"graphite": ["127.0.0.1:9"], "graphite_buffer": 1000})  # nobody listens
    sup = Supervisor(cfg)
    sink = sup.graphite[0]
    sink.write([Metric(f"a.m{i}", float(i), 1700000000 + i) for i in range(500)])
    bigger = build({"graphite": ["127.0.0.1:9"], "graphite_buffer": 5000,
                    "graphite_resend_seconds": 60})
    sup._reopen_outputs(cfg, bigger)
    assert sup.graphite == [sink] and sink.buffered == 500 and sink.dropped == 0
    assert (sink.max_lines, sink.resend_seconds) == (5000, 60)
    smaller = build({"graphite": ["127.0.0.1:9"], "graphite_buffer": 200})
    sup._reopen_outputs(bigger, smaller)
    assert sink.buffered == 200 and sink.dropped == 300  # the oldest, counted
    sup._reopen_outputs(smaller, build({"graphite": ["127.0.0.1:10"]}))
    assert sup.graphite[0] is not sink  # a destination that is gone is closed


def test_reload_applies_hostname_format(tmp_path: Path) -> None:
    uri = write_node(tmp_path / "n.xml", [
        domain_xml("vm-1", 1, metadata='<app:i xmlns:app="urn:app"><host>web.01</host></app:i>')])
    conf = tmp_path / "c.toml"
    conf.write_text(f'connect = "{uri}"\ninterval = 0.5\n')
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = cli_popen("run", "-c", str(conf), stdout=out, stderr=err)
        try:
            time.sleep(2.5)
            conf.write_text(f'connect = "{uri}"\ninterval = 0.5\nhostname_format = ["metadata"]\n'
                            'hostname_metadata_ns = "urn:app"\nhostname_metadata_path = "host"\n')
            proc.send_signal(signal.SIGHUP)
            time.sleep(3)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        out.seek(0)
        err.seek(0)
        lines, stderr = parse_lines(out.read()), err.read()
    assert proc.returncode == 0, stderr
    no_traceback(stderr)
    hosts = [p.split(".")[0] for p, _, _ in lines if ".virt." in p]
    assert hosts[0] == "vm-1" and hosts[-1] == "web_01"
