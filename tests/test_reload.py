"""SIGHUP applies every key to a running collector (what it keeps: tests/test_publisher.py)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from nodes import domain_xml, write_node
from runner import run_during


def test_reload_applies_hostname_format(tmp_path: Path) -> None:
    uri = write_node(tmp_path / "n.xml", [
        domain_xml("vm-1", 1, metadata='<app:i xmlns:app="urn:app"><host>web.01</host></app:i>')])
    conf = tmp_path / "c.toml"
    conf.write_text(f'connect = "{uri}"\ninterval = 0.5\n')

    def reload(proc: subprocess.Popen[str]) -> None:
        time.sleep(2.5)
        conf.write_text(f'connect = "{uri}"\ninterval = 0.5\nhostname_format = ["metadata"]\n'
                        'hostname_metadata_ns = "urn:app"\nhostname_metadata_path = "host"\n')
        proc.send_signal(signal.SIGHUP)
        time.sleep(3)

    lines, _stderr, _ = run_during(["run", "-c", str(conf)], reload)
    hosts = [p.split(".")[0] for p, _, _ in lines if ".virt." in p]
    assert hosts[0] == "vm-1" and hosts[-1] == "web_01"
