"""Prometheus's real parts for the tests: a scrape parsed as a scraper does, Debian's
prometheus-libvirt-exporter on a URI of the test's, and a private Prometheus server
(loopback, its own TSDB in the test's directory, scraping every second)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Series = dict[str, dict[tuple[tuple[str, str], ...], float]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fetch(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def parse(text: str) -> Series:
    """name -> {sorted label items -> value}."""
    out: Series = {}
    for fam in text_string_to_metric_families(text):  # type: ignore[no-untyped-call, unused-ignore]
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def wait_for(url: str, seconds: float = 20) -> str:
    """The body of ``url`` once it answers 200."""
    limit = time.monotonic() + seconds
    while True:
        try:
            return fetch(url, timeout=2)
        except OSError:
            if time.monotonic() > limit:
                raise
            time.sleep(0.1)


def scrape_when_full(url: str, domains: int, seconds: float = 30) -> str:
    """An exporter's /metrics once ``domains`` domains have a sample with disks on it and
    every instance has finished a tick (``libvirt_up`` 1): under load all the domains of
    a run of 2 instances came from virt-0 before virt-1's first tick (r24: up 0)."""
    limit = time.monotonic() + seconds
    while True:
        text = wait_for(url)
        series = parse(text)
        disks = {dict(k)["domain"] for k in
                 series.get("libvirt_domain_block_stats_read_bytes_total", {})}
        if series.get("libvirt_domains_number", {}).get((), 0) == domains \
                and len(disks) == domains and series.get("libvirt_up", {}).get(()) == 1:
            return text
        if time.monotonic() > limit:
            raise AssertionError(f"not {domains} domains with disks: {text[-2000:]}")
        time.sleep(0.2)


def missing_from(ours: Series, theirs: Series) -> dict[str, list[tuple[tuple[str, str], ...]]]:
    """Per name, the label sets ``theirs`` has and ``ours`` has not (a few of them)."""
    out = {}
    for name, labels in theirs.items():
        lacking = sorted(set(labels) - set(ours.get(name, {})))
        if lacking:
            out[name] = lacking[:2]
    return out


def libvirt_only(series: Series) -> Series:
    """The libvirt_* series (Go's and the process's own left out)."""
    return {k: v for k, v in series.items() if k.startswith("libvirt_")}


class DebianExporter:
    """Debian's prometheus-libvirt-exporter 0.2.0 (kumina) on ``uri``."""

    BINARY = "/usr/bin/prometheus-libvirt-exporter"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def installed(cls) -> bool:
        return Path(cls.BINARY).exists()

    def __enter__(self) -> DebianExporter:
        self.proc = subprocess.Popen([self.BINARY, f"--libvirt.uri={self.uri}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{self.port}/")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def scrape(self, timeout: float = 60) -> str:
        return fetch(f"http://127.0.0.1:{self.port}/metrics", timeout)


class PrometheusServer:
    """Debian's prometheus, private: its config, TSDB and port under ``base``, scraping
    ``targets`` every second (job "vpc")."""

    def __init__(self, base: Path, targets: list[str], interval: str = "1s") -> None:
        self.base = base
        self.port = free_port()
        base.mkdir(parents=True, exist_ok=True)
        (base / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n"
            "scrape_configs:\n  - job_name: vpc\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def installed() -> bool:
        return shutil.which("prometheus") is not None

    def __enter__(self) -> PrometheusServer:
        log = open(self.base / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.base / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.base / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=log, start_new_session=True)
        wait_for(f"http://127.0.0.1:{self.port}/-/ready", 30)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        args = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = json.loads(fetch(f"http://127.0.0.1:{self.port}/api/v1/query?"
                                + urllib.parse.urlencode(args)))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, expr: str, start: float, end: float,
                    step: float = 1.0) -> list[dict[str, Any]]:
        """A range query's result matrix."""
        args = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        body = json.loads(fetch(f"http://127.0.0.1:{self.port}/api/v1/query_range?"
                                + urllib.parse.urlencode(args)))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
