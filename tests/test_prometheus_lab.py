"""A real Prometheus server (Debian's package) scraping the collector every second on four
QEMU domains, beside Debian's prometheus-libvirt-exporter on the same private libvirtd:
``up`` 1 at every scrape, each domain's cpu rate as Prometheus computes it from our
counters within 5 % of /proc's account of its QEMU, and every name and label set
Debian's exporter exposes present in ours."""

from __future__ import annotations

import itertools
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from harness import PrivateLibvirtd
from promlab import (
    DebianExporter,
    PrometheusServer,
    free_port,
    libvirt_only,
    missing_from,
    parse,
    scrape_when_full,
)
from require import require_or_fail
from runner import cli_popen, no_traceback
from soak import CpuTruth

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]
RUN_SECONDS = 40
DOMAINS = [f"par-{i}" for i in range(4)]


def test_prometheus_scrapes_every_second_and_reads_the_true_cpu_rate(
        parity_lab: PrivateLibvirtd, tmp_path: Path) -> None:
    require_or_fail(PrometheusServer.installed(), "prometheus (Debian)")
    require_or_fail(DebianExporter.installed(), "prometheus-libvirt-exporter (Debian)")
    lab = parity_lab
    port = free_port()
    ours = f"127.0.0.1:{port}"
    err = open(tmp_path / "stderr", "w+")  # noqa: SIM115 - read after the run
    proc = cli_popen("run", "--connect", lab.uri, "--instances", "4", "--interval", "1",
                     "--prometheus", ours, stdout=subprocess.DEVNULL, stderr=err)
    pids = {d: lab.qemu_pid(d) for d in DOMAINS}
    try:
        mine = parse(scrape_when_full(f"http://{ours}/metrics", 4))
        with DebianExporter(lab.uri) as debian, CpuTruth(pids) as truth, \
                PrometheusServer(tmp_path / "prom", [ours]) as prom:
            theirs = libvirt_only(parse(debian.scrape()))
            start = time.time()
            time.sleep(RUN_SECONDS)
            end = time.time()
            ups = prom.query_range(f'up{{instance="{ours}"}}', start + 2, end - 1)
            # Every scrape Prometheus made, as it stored it (target discovery takes a few
            # seconds at its start).
            scrapes = prom.query(f'up{{instance="{ours}"}}[{RUN_SECONDS}s]', end)
            rates = prom.query_range("rate(libvirt_domain_info_cpu_time_seconds_total[5s])",
                                     start + 8, end - 1)
    finally:
        proc.terminate()
        proc.wait(20)
    err.seek(0)
    no_traceback(err.read())
    # Each domain's rate as Prometheus computes it, against /proc over the same 5 s.
    report = {}
    for series in rates:
        domain = series["metric"]["domain"]
        ratios = []
        for ts, value in series["values"]:
            true = truth.rate(domain, float(ts) - 5, float(ts))
            if true:
                ratios.append(float(value) * 1e9 / true)
        close = sum(1 for r in ratios if abs(r - 1) <= 0.05) / len(ratios)
        report[domain] = (round(statistics.median(ratios), 4), round(min(ratios), 3),
                          round(max(ratios), 3), len(ratios), f"{close:.0%} within 5 %")
    print("rate / /proc (median, min, max, n, share):", report)
    # Every name and label set of Debian's exporter, in ours.
    assert missing_from(mine, theirs) == {}
    # up 1 at every scrape, a scrape every second.
    assert len(ups) == 1
    values = [float(v) for _, v in ups[0]["values"]]
    assert values and set(values) == {1.0}
    stored = [(float(ts), float(v)) for ts, v in scrapes[0]["values"]]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(stored)]
    print(f"{len(stored)} scrapes, up {sorted({v for _, v in stored})}, "
          f"largest gap {max(gaps):.2f} s")
    assert len(stored) >= RUN_SECONDS - 10 and {v for _, v in stored} == {1.0}
    assert max(gaps) < 1.5
    assert set(report) == set(DOMAINS)
    for domain, (median, _, _, n, _) in report.items():
        assert n >= RUN_SECONDS - 12, (domain, n)
        assert abs(median - 1) <= 0.05, (domain, report[domain])
