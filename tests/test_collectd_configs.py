"""A drop-in for collectd's virt setups: for each collectd.conf, the configuration
``import-collectd`` makes from it writes the same set of paths as collectd 5.12 itself.

The four QEMU domains of the parity lab; for each configuration collectd and
vpartcollect run side by side for 14 s, each writing to a carbon-cache of its own
(vpartcollect's destination is the only thing changed in what was imported). The
sets of paths must be equal both ways, apart from the documented difference
(``unresponsive``, ours); gauges must be equal, raw counters read within a second
of each other equal in most pairs, as in test_collectd_parity.py.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from carbon import PrivateCarbon
from collectd_lab import COLLECTD_HEAD, paired, series
from harness import PrivateLibvirtd
from runner import cli, cli_popen, no_traceback

pytestmark = [pytest.mark.libvirtd, pytest.mark.carbon,
              pytest.mark.skipif(not shutil.which("collectd"),
                                 reason="collectd-core missing: run bin/setup-host --test")]

SECONDS = 14
NODE = """<Plugin write_graphite>
  <Node "carbon">
    Host "127.0.0.1"
    Port "{port}"
    StoreRates false
{node}  </Node>
</Plugin>
"""
CONFIGS = {
    "default": ("", ""),
    "formats": ('ExtraStats "disk cpu_util memory vcpu domain_state disk_capacity"\n'
                "InterfaceFormat address\nBlockDeviceFormat source\n"
                "BlockDeviceFormatBasename true\n", ""),
    "filters": ('Domain "/par-[01]$/"\nBlockDevice "/:vd[bc]$/"\nIgnoreSelected true\n'
                'ExtraStats "disk_capacity vcpupin"\n', ""),
    "graphite": ('ExtraStats "pcpu disk_physical"\nPluginInstanceFormat uuid\n',
                 '    Prefix "collectd."\n    SeparateInstances true\n'
                 "    AlwaysAppendDS true\n"),
}
OURS_ONLY = re.compile(r".*\.vpartcollect[.-].*|.*\.unresponsive(\.value)?")
GAUGE = re.compile(r".*(disk_(allocation|capacity|physical)|domain_state|memory|"
                   r"cpu_affinity).*")
NOT_PAIRED = re.compile(r".*(virt_cpu_total|ps_cputime|virt_vcpu|percent|total_time_in_ms).*")
PAIRED_EQUAL = 0.75


def run_both(lab: PrivateLibvirtd, base: Path, virt: str, node: str
             ) -> tuple[PrivateCarbon, PrivateCarbon, int, int]:
    theirs = PrivateCarbon(base / "carbon-collectd").start()
    ours = PrivateCarbon(base / "carbon-ours").start()
    conf = base / "collectd.conf"
    conf.write_text(COLLECTD_HEAD.format(base=base)
                    + f'<Plugin virt>\nConnection "{lab.uri}"\nInstances 4\n{virt}</Plugin>\n'
                    + NODE.format(port=theirs.port, node=node))
    imported = cli("import-collectd", str(conf))
    assert imported.returncode == 0, imported.stderr
    (base / "vp.toml").write_text(imported.stdout)
    with tempfile.TemporaryFile("w+") as err:
        # collectd reads at its start time plus whole intervals; ours at multiples of the
        # interval. Started half an interval off ours, its calls never hold a domain's job
        # at our tick: a NOWAIT answer taken during one lacks the block counters (the
        # second ask recovers most, not all, of such collisions; see README).
        time.sleep((1.0 - time.time() % 2.0) % 2.0)
        collectd = subprocess.Popen(["collectd", "-C", str(conf), "-f"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        mine = cli_popen("run", "-c", str(base / "vp.toml"), "--graphite", ours.address,
                         stdout=subprocess.DEVNULL, stderr=err)
        start = int(time.time())
        time.sleep(SECONDS)
        end = int(time.time())
        for proc in (mine, collectd):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        err.seek(0)
        no_traceback(err.read())
    time.sleep(3)  # carbon writes its cache out
    theirs.stop()
    ours.stop()
    return theirs, ours, start, end


@pytest.mark.parametrize("name", list(CONFIGS))
def test_imported_configuration_writes_what_collectd_writes(
        parity_lab: PrivateLibvirtd, tmp_path: Path, name: str) -> None:
    virt, node = CONFIGS[name]
    theirs, ours, start, end = run_both(parity_lab, tmp_path, virt, node)
    want = set(theirs.paths())
    got = {p for p in ours.paths() if not OURS_ONLY.fullmatch(p)}
    assert len(want) >= 8, (tmp_path / "collectd.log").read_text()[-2000:]
    print(f"{name}: {len(want)} paths from collectd, {len(got)} from vpartcollect")
    assert sorted(want - got) == [] and sorted(got - want) == []
    unequal = []
    for path in sorted(want):
        a, b = series(theirs, path, start + 4, end), series(ours, path, start + 4, end)
        if GAUGE.fullmatch(path) and not path.endswith(("rss", "rss.value")):
            if not a or not b or a[-1][1] != b[-1][1]:
                unequal.append(f"{path}: collectd {a[-1:]}, ours {b[-1:]}")
        elif not NOT_PAIRED.fullmatch(path) and not GAUGE.fullmatch(path):
            pairs = paired(a, b)
            if len(pairs) < 2 or sum(va == vb for va, vb in pairs) < PAIRED_EQUAL * len(pairs):
                unequal.append(f"{path}: {pairs[:4]}")
    assert unequal == [], unequal
