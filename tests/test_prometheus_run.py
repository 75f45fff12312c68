"""The collector's Prometheus endpoint on libvirt's test driver: beside Debian's
prometheus-libvirt-exporter on the same domains, every name and label set it exposes is in
ours; promtool finds nothing wrong; a bad web_config or a port taken is one line, exit 2."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from promlab import (
    DebianExporter,
    fetch,
    free_port,
    libvirt_only,
    missing_from,
    parse,
    scrape_when_full,
    wait_for,
)
from require import require_or_fail
from runner import DEMO_URI, children, cli, cli_popen, no_traceback


def run_exporting(port: int, *extra: str) -> subprocess.Popen[str]:
    return cli_popen("run", "--connect", DEMO_URI, "--interval", "1", "--instances", "2",
                     "--prometheus", f"127.0.0.1:{port}", "--no-stdout", "--graphite",
                     "127.0.0.1:9", *extra)


def test_every_name_and_label_set_of_debians_exporter_is_in_ours() -> None:
    require_or_fail(DebianExporter.installed(), "prometheus-libvirt-exporter (Debian)")
    port = free_port()
    proc = run_exporting(port)
    try:
        ours = parse(scrape_when_full(f"http://127.0.0.1:{port}/metrics", 10))
        with DebianExporter(DEMO_URI) as theirs:
            debian = libvirt_only(parse(theirs.scrape()))
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    no_traceback(err)
    assert len(debian) == 19  # all of 0.2.0's families: info 4, state, block 4, nic 8, 2
    assert missing_from(ours, debian) == {}
    assert ours["libvirt_up"][()] == 1


def test_promtool_finds_no_problem_in_either_format() -> None:
    require_or_fail(Path("/usr/bin/promtool").exists(), "promtool (Debian's prometheus)")
    port = free_port()
    proc = run_exporting(port)
    try:
        text = scrape_when_full(f"http://127.0.0.1:{port}/metrics", 10)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True, check=False)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


def test_a_bad_web_config_or_a_taken_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "web.yml"
    bad.write_text("basic_auth_users:\n  prom: plaintext\n")
    res = cli("run", "--connect", DEMO_URI, "--prometheus", "127.0.0.1:9100",
              "--web-config", str(bad))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "web_config" in res.stderr and "bcrypt" in res.stderr
    port = free_port()
    proc = run_exporting(port)
    try:
        wait_for(f"http://127.0.0.1:{port}/")
        res = cli("run", "--connect", DEMO_URI, "--prometheus", f"127.0.0.1:{port}")
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert f"prometheus: cannot listen on 127.0.0.1:{port}" in res.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1:0", "127.0.0.1:99999"])
def test_a_bad_address_is_one_line(value: str) -> None:
    res = cli("run", "--connect", DEMO_URI, "--prometheus", value)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("vpartcollect: error: prometheus: "), res.stderr


def test_idle_connections_and_a_megabyte_of_headers_hold_up_no_scrape_nor_line(
        tmp_path: Path) -> None:
    """What the timing of bench/prometheus.py measures, as a user sees it: while 100
    connections sit silent and a client sends a megabyte of headers, other scrapes are
    answered whole and every tick's lines still reach stdout."""
    port = free_port()
    out = open(tmp_path / "stdout", "w+")  # noqa: SIM115 - read after the run
    proc = cli_popen("run", "--connect", DEMO_URI, "--interval", "1", "--prometheus",
                     f"127.0.0.1:{port}", "--stdout", stdout=out)
    silent: list[socket.socket] = []
    try:
        scrape_when_full(f"http://127.0.0.1:{port}/metrics", 10)
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as flood:
            flood.sendall(b"GET /metrics HTTP/1.1\r\n")
            with contextlib.suppress(OSError):  # the server may close it: 431
                for _ in range(1000):
                    flood.sendall(b"X-Junk: " + b"a" * 1000 + b"\r\n")
            start = time.time()
            for _ in range(5):
                series = parse(fetch(f"http://127.0.0.1:{port}/metrics"))
                assert series["libvirt_domains_number"][()] == 10
                time.sleep(0.5)
            end = time.time()
    finally:
        for sock in silent:
            sock.close()
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    no_traceback(err or "")
    out.seek(0)
    ticks = {int(float(line.rsplit(" ", 1)[1])) for line in out if line.strip()}
    assert set(range(int(start) + 1, int(end))) <= ticks


def test_sighup_with_a_bad_web_config_keeps_the_running_one(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\n")
    conf = tmp_path / "vp.toml"
    conf.write_text(f'web_config = "{web}"\n')
    port = free_port()
    proc = cli_popen("run", "-c", str(conf), "--connect", DEMO_URI, "--interval", "1",
                     "--prometheus", f"127.0.0.1:{port}")
    try:
        scrape_when_full(f"http://127.0.0.1:{port}/metrics", 10)
        web.write_text("basic_auth_users:\n  prom: plaintext\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert proc.poll() is None
        assert "libvirt_up" in fetch(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    no_traceback(err)
    assert "expected a bcrypt hash" in err


def https(port: int, trust: ssl.SSLContext) -> str:
    with urllib.request.urlopen(f"https://localhost:{port}/metrics", timeout=10,
                                context=trust) as resp:
        return str(resp.read().decode())


def test_sighup_keeps_the_endpoint_and_serves_the_new_settings(tmp_path: Path) -> None:
    """Issue 26 review: a SIGHUP that changed the exporter's settings (or none, with TLS
    on) stopped the daemon ("cannot listen ...: Address already in use", exit 2)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n")
    trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    conf = tmp_path / "vp.toml"
    port = free_port()
    conf.write_text(f'web_config = "{web}"\ninterval = 1\nprometheus = "127.0.0.1:{port}"\n')
    proc = cli_popen("run", "-c", str(conf), "--connect", DEMO_URI, "--no-stdout",
                     "--graphite", "127.0.0.1:9")
    try:
        limit = time.monotonic() + 20
        while True:
            try:
                assert "Sampled every 1 s." in https(port, trust)
                break
            except OSError:
                assert time.monotonic() < limit and proc.poll() is None
                time.sleep(0.2)
        proc.send_signal(signal.SIGHUP)  # nothing changed, TLS on
        time.sleep(1.5)
        assert proc.poll() is None
        assert "Sampled every 1 s." in https(port, trust)
        conf.write_text(f'web_config = "{web}"\ninterval = 2\n'
                        f'prometheus = "127.0.0.1:{port}"\n')
        proc.send_signal(signal.SIGHUP)
        limit = time.monotonic() + 10
        while True:
            assert proc.poll() is None
            # New settings start a new exporter; the old one drains (answers what it
            # was asked, then exits: test_prometheus_restart.py), so no scrape fails.
            if "Sampled every 2 s." in https(port, trust):
                break
            assert time.monotonic() < limit
            time.sleep(0.2)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        conf.write_text(f'web_config = "{web}"\ninterval = 2\n'
                        f'prometheus = "127.0.0.1:{taken.getsockname()[1]}"\n')
        proc.send_signal(signal.SIGHUP)  # a taken port: refused, the running one kept
        time.sleep(1.5)
        taken.close()
        assert proc.poll() is None
        assert "Sampled every 2 s." in https(port, trust)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    no_traceback(err)
    assert "Address already in use; keeping the running configuration" in err, err


def test_a_user_removed_from_web_yml_stays_out_after_the_exporter_restarts(
        tmp_path: Path) -> None:
    """Review of issue 26: an exporter started again (crashed, killed) began from the
    file as read at start, so a user removed since was let in again."""
    def users(*names: str) -> str:
        return "basic_auth_users:\n" + "".join(
            f"  {n}: '{bcrypt.hashpw(n.encode(), bcrypt.gensalt(4)).decode()}'\n"
            for n in names)

    def status(user: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={
            "Authorization": "Basic " + base64.b64encode(f"{user}:{user}".encode()).decode()})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    web = tmp_path / "web.yml"
    web.write_text(users("alice"))
    port = free_port()
    proc = cli_popen("run", "--connect", DEMO_URI, "--interval", "1", "--no-stdout",
                     "--graphite", "127.0.0.1:9", "--prometheus", f"127.0.0.1:{port}",
                     "--web-config", str(web))
    try:
        limit = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                if status("alice") == 200:
                    break
            assert time.monotonic() < limit and proc.poll() is None
            time.sleep(0.2)
        web.write_text(users("bob"))  # no request sees it before the exporter dies
        exporter = [pid for pid in children(proc.pid)
                    if "prometheus" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(exporter) == 1
        os.kill(exporter[0], signal.SIGKILL)
        limit = time.monotonic() + 10
        while True:  # started again after its backoff
            with contextlib.suppress(OSError):
                again = [pid for pid in children(proc.pid)
                         if "prometheus" in Path(f"/proc/{pid}/cmdline").read_text()]
                if again and again != exporter and status("bob") in (200, 401):
                    break
            assert time.monotonic() < limit
            time.sleep(0.2)
        assert (status("alice"), status("bob")) == (401, 200)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    no_traceback(err)
