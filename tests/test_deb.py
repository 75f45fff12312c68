"""The Debian package, as bin/package builds it: lintian, its contents, and its collector
run with Debian's python3 and Debian's python3-* libraries from the extracted package (not
installed system-wide; bin/setup-host --test installs those libraries)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from runner import no_traceback, parse_lines

import vpartcollect

pytestmark = [pytest.mark.package, pytest.mark.slow]

ROOT = Path(__file__).parent.parent
DEB = f"vpartcollect_{vpartcollect.__version__}_all.deb"
SYSTEM_PYTHON = "/usr/bin/python3"
DEBIAN_DEPS = ("python3-libvirt", "python3-msgpack", "python3-click", "python3-defusedxml",
               "python3-prometheus-client", "python3-yaml", "python3-bcrypt")
# Tags lintian may still print, each explained in README's "Installing from a Debian
# package" (checked below).
EXPLAINED_TAGS = {"package-supports-alternative-init-but-no-init.d-script"}


@dataclass
class Built:
    deb: Path
    lintian: str  # what bin/package printed on stdout: lintian's tags
    root: Path  # the package extracted with dpkg-deb -x

    @property
    def site(self) -> Path:
        return self.root / "usr/lib/python3/dist-packages"

    def env(self) -> dict[str, str]:
        """Debian's python3 seeing the extracted package and the system's libraries only."""
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
        return {**keep, "PYTHONPATH": str(self.site)}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The packaged ``/usr/bin/vpartcollect ARGS``, run by Debian's python3."""
        return subprocess.run([SYSTEM_PYTHON, str(self.root / "usr/bin/vpartcollect"), *args],
                              capture_output=True, text=True, timeout=120, env=self.env(),
                              check=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    out = tmp_path_factory.mktemp("deb")
    res = subprocess.run([str(ROOT / "bin/package"), str(out)], capture_output=True,
                         text=True, timeout=1200, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    deb = out / DEB
    assert deb.is_file(), sorted(p.name for p in out.iterdir())
    root = out / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    yield Built(deb, res.stdout, root)


def _deb(built: Built, *args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True
                          ).stdout


def test_lintian_leaves_only_tags_the_readme_explains(built: Built) -> None:
    tags = re.findall(r"^([EWIXPO]): vpartcollect: (\S+)", built.lintian, re.M)
    assert all(level in "IXP" for level, _ in tags), built.lintian  # no error or warning
    assert {tag for _, tag in tags} <= EXPLAINED_TAGS, built.lintian
    readme = (ROOT / "README.rst").read_text()
    for tag in EXPLAINED_TAGS:
        assert tag in readme


def test_contents_fields_and_maintainer_scripts(built: Built) -> None:
    paths = {line.split()[-1].lstrip(".") for line in
             _deb(built, "--contents", str(built.deb)).splitlines()}
    version = vpartcollect.__version__
    for want in ("/usr/bin/vpartcollect", "/lib/systemd/system/vpartcollect.service",
                 "/etc/vpartcollect.toml", "/usr/share/vpartcollect/vpartcollect.toml",
                 "/usr/share/man/man1/vpartcollect.1.gz",
                 "/usr/share/doc/vpartcollect/copyright",
                 "/usr/lib/python3/dist-packages/vpartcollect/cli.py",
                 "/usr/lib/python3/dist-packages/vpartcollect/worker/session.py",
                 "/usr/lib/python3/dist-packages/vpartcollect/data/demo-node.xml",
                 f"/usr/lib/python3/dist-packages/vpartcollect-{version}.dist-info/"):
        assert want in paths, want
    # Only the application: no tests, benchmarks, virtualenv or byte code of the build.
    assert not [p for p in paths if re.search(r"/(tests|bench|\.venv)/|__pycache__|\.pyc$", p)]
    # The package is exactly the source tree's modules.
    shipped = {p.split("dist-packages/")[1] for p in paths
               if p.endswith(".py") and "dist-packages/vpartcollect/" in p}
    source = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src/vpartcollect").rglob("*.py")}
    assert shipped == source

    assert _deb(built, "-f", str(built.deb), "Version").strip() == version
    assert _deb(built, "-f", str(built.deb), "Architecture").strip() == "all"
    depends = {d.strip().split()[0] for d in
               _deb(built, "-f", str(built.deb), "Depends").split(",")}
    assert set(DEBIAN_DEPS) <= depends
    assert not depends & {"libvirt-dev", "gcc", "python3-venv", "python3-pip"}
    assert _deb(built, "-I", str(built.deb), "conffiles").split() == ["/etc/vpartcollect.toml"]
    postinst = _deb(built, "-I", str(built.deb), "postinst")
    assert "deb-systemd-helper enable 'vpartcollect.service'" in postinst
    postrm = _deb(built, "-I", str(built.deb), "postrm")
    assert "rm -rf /var/lib/vpartcollect" in postrm  # the spool goes with a purge
    example = (ROOT / "contrib/vpartcollect.toml").read_bytes()
    assert (built.root / "etc/vpartcollect.toml").read_bytes() == example
    assert (built.root / "usr/share/vpartcollect/vpartcollect.toml").read_bytes() == example


def test_packaged_collector_runs_on_debians_python_and_libraries(built: Built) -> None:
    where = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import vpartcollect, libvirt, msgpack, click, defusedxml\n"
         "for m in (vpartcollect, libvirt, msgpack, click, defusedxml): print(m.__file__)"],
        capture_output=True, text=True, env=built.env(), check=True).stdout.split()
    assert where[0] == str(built.site / "vpartcollect/__init__.py")
    assert all(p.startswith("/usr/lib/python3/dist-packages/") for p in where[1:]), where

    res = built.run("--version")
    assert (res.returncode, res.stdout) == (0, f"vpartcollect {vpartcollect.__version__}\n")

    res = built.run("run", "--connect", "test:///default", "--once")
    assert res.returncode == 0, res.stderr
    no_traceback(res.stderr)
    values = {path: value for path, value, _ in parse_lines(res.stdout)}
    conn = libvirt.open("test:///default")  # the oracle: the driver's own values
    try:
        memory_kib = conn.lookupByName("test").info()[2]
    finally:
        conn.close()
    assert values["test.virt.memory-total"] == memory_kib * 1024
    # The test driver's cpu time is the wall clock: one second of cpu a second.
    assert values["test.virt.virt_cpu_total"] == pytest.approx(1e9, rel=0.05)

    res = built.run("check-config", "-c", str(built.root / "etc/vpartcollect.toml"),
                    "--connect", "test:///default")
    assert (res.returncode, res.stdout) == (
        0, "configuration OK: 1 instance(s), test:///default\n"), res.stderr


def test_unit_passes_systemd_analyze_verify(built: Built, tmp_path: Path) -> None:
    unit = (built.root / "lib/systemd/system/vpartcollect.service").read_text()
    contrib = (ROOT / "contrib/vpartcollect.service").read_text()
    # contrib's unit, pointed at /usr/bin and the man page (debian/rules).
    body = contrib[contrib.index("[Unit]"):]
    assert unit == re.sub(r"Documentation=.*", "Documentation=man:vpartcollect(1)", body
                          ).replace("/opt/vpartcollect/.venv/bin/", "/usr/bin/")
    # verify wants the executables and the man page where the unit names them: the same
    # unit with its collector in the extracted root.
    local = tmp_path / "vpartcollect.service"
    collector = str(built.root / "usr/bin/vpartcollect")
    local.write_text(unit.replace("/usr/bin/vpartcollect", collector))
    res = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                         text=True, timeout=60, check=False,
                         env={**os.environ, "MANPATH": str(built.root / "usr/share/man")})
    assert res.returncode == 0, res.stderr
    assert [line for line in res.stderr.splitlines() if "vpartcollect" in line] == []


def test_service_waits_for_a_configuration_that_is_not_the_example(built: Built,
                                                                   tmp_path: Path) -> None:
    """The unit's ExecCondition: skipped (exit 1, one line why) while /etc/vpartcollect.toml
    is the shipped example, run once it is edited (here in copies of the two files)."""
    unit = (built.root / "lib/systemd/system/vpartcollect.service").read_text()
    found = re.search(r"^ExecCondition=(.*)$", unit, re.M)
    assert found is not None
    etc = tmp_path / "vpartcollect.toml"
    example = built.root / "usr/share/vpartcollect/vpartcollect.toml"
    etc.write_bytes((built.root / "etc/vpartcollect.toml").read_bytes())
    argv = [a.replace("/etc/vpartcollect.toml", str(etc))
             .replace("/usr/share/vpartcollect/vpartcollect.toml", str(example))
            for a in shlex.split(found.group(1))]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res
    assert "is the shipped example" in res.stderr
    etc.write_text(etc.read_text() + 'graphite = ["carbon.example:2003"]\n')
    res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    assert (res.returncode, res.stderr) == (0, "")


def test_the_suites_test_driver_tests_pass_against_the_packaged_collector(built: Built) -> None:
    """The same tests as for the checkout, their collector the package's (VPC_COLLECTOR_CMD)."""
    cmd = shlex.join(["env", f"PYTHONPATH={built.site}", SYSTEM_PYTHON,
                      str(built.root / "usr/bin/vpartcollect")])
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-m", "not libvirtd and not carbon and not slow",
                          str(ROOT / "tests/test_cli_testdriver.py")],
                         capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
                         env={**os.environ, "VPC_COLLECTOR_CMD": cmd})
    assert res.returncode == 0, res.stdout[-3000:]
    assert re.search(r"\b\d{2,} passed", res.stdout), res.stdout[-500:]
