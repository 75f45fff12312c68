"""A private, real libvirtd with tiny QEMU domains, for tests and benchmarks (as root).

libvirtd runs in its own mount namespace with /etc/libvirt, /run/libvirt,
/var/lib/libvirt and /var/log/libvirt bound to a scratch directory, and its own
socket, so it never touches a libvirtd already on the machine. Domains have no
OS: QEMU idles in firmware and answers its monitor. ``freeze`` is SIGSTOP of the
QEMU process, exactly what a storage stall does to it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from vpartcollect.partition import TAG_NS

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


def session_members(sid: int) -> list[int]:
    """Pids still alive in session ``sid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


class HarnessError(RuntimeError):
    """The private libvirtd could not be set up."""


def _run(*cmd: str, timeout: float = 60) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


class PrivateLibvirtd:
    """One libvirtd of our own under ``base``; ``uri`` reaches it."""

    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.domains: list[str] = []
        self.frozen: set[str] = set()
        self.kind = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.base}/sock/libvirt-sock"

    @property
    def test_uri(self) -> str:
        """libvirt's test driver served by this libvirtd: real RPC, real locks, and cpu
        time that is the wall clock (so every cpu rate must be 1e9 ns/s)."""
        return f"test+unix:///default?socket={self.base}/sock/libvirt-sock"

    @property
    def admin_uri(self) -> str:
        return f"libvirtd:///system?socket={self.base}/sock/libvirt-admin-sock"

    # -- daemon -------------------------------------------------------------
    def start(self) -> PrivateLibvirtd:
        """Write the configuration and start libvirtd; wait until it answers."""
        if os.geteuid() != 0:
            raise HarnessError("the real-libvirtd tests need root (run bin/test as root)")
        for user_or_group in (["getent", "passwd", "libvirt-qemu"],
                              ["getent", "group", "libvirt-qemu"]):
            if subprocess.run(user_or_group, capture_output=True, check=False).returncode:
                raise HarnessError("user/group libvirt-qemu missing: run bin/setup-host --test")
        b = self.base
        for sub in ("etc", "run", "lib", "log", "sock", "images", "cache"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        (b / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{b}/sock"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{b}/log/libvirtd.log"\nmax_workers = 20\n')
        (b / "etc" / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\nsecurity_driver = "none"\nstdio_handler = "file"\n'
            'dynamic_ownership = 0\nremember_owner = 0\n')
        binds = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
                 "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}
        script = "set -e; " + "; ".join(
            f"mkdir -p {target}; mount --bind {b}/{src} {target}" for src, target in binds.items())
        script += f"; exec libvirtd -f /etc/libvirt/libvirtd.conf -p {b}/libvirtd.pid"
        log = open(b / "log" / "stderr.log", "ab")  # noqa: SIM115 - lives as long as libvirtd
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                      "sh", "-c", script], stdout=log, stderr=log,
                                     start_new_session=True)
        limit = time.monotonic() + 30
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                raise HarnessError(f"libvirtd exited: {(b / 'log' / 'stderr.log').read_text()}")
            if subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True,
                              check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise HarnessError("libvirtd did not answer within 30 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill_daemon(self) -> None:
        """SIGKILL libvirtd (QEMUs keep running, as with a real crash)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        """Thaw and destroy every domain, stop libvirtd, leave no QEMU behind."""
        for name in list(self.frozen):
            self.thaw(name)
        if self.proc is not None:
            # All at once: one by one, 30 domains took a minute of the outage lab's teardown.
            destroys = [subprocess.Popen(["virsh", "-c", self.uri, "destroy", name],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        for name in self.domains]
            for destroy in destroys:
                try:
                    destroy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    destroy.kill()
                    destroy.wait()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        for pid in self._qemu_pids():
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _qemu_pids(self) -> list[int]:
        pids = []
        for name in self.domains:
            res = subprocess.run(["pgrep", "-f", f"guest={name},"], capture_output=True,
                                 text=True, check=False)
            pids += [int(p) for p in res.stdout.split()]
        return pids

    # -- domains ------------------------------------------------------------
    def domain_xml(self, name: str, tag: str | None, nic: str, image: Path,
                   extra_disks: Sequence[tuple[str, str, Path]] = (),
                   extra_driver: str = "", acpi: bool = False,
                   vcpus: tuple[int, int] = (1, 1)) -> str:
        extra = "".join(f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'{extra_driver}/>
      <source file='{path}'/>
      <target dev='{dev}' bus='virtio'/>
    </disk>""" for dev, fmt, path in extra_disks)
        meta = (f'<metadata><ovirtmap:tag xmlns:ovirtmap="{TAG_NS}">{tag}</ovirtmap:tag>'
                "</metadata>" if tag else "")
        return f"""<domain type='{self.kind}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu current='{vcpus[0]}'>{vcpus[1]}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  {"<features><acpi/></features>" if acpi else ""}
  {meta}
  <devices>
    <emulator>{QEMU}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{image}'/>
      <target dev='vda' bus='virtio'/>
    </disk>{extra}
    <interface type='ethernet'>
      <target dev='{nic}' managed='yes'/>
      <model type='virtio'/>
    </interface>
    <memballoon model='virtio'/>
  </devices>
</domain>"""

    def create(self, name: str, tag: str | None = None, nic: str | None = None,
               image_dir: Path | None = None,
               extra_disks: Sequence[tuple[str, str, Path]] = (),
               extra_driver: str = "", image_ready: bool = False, acpi: bool = False,
               vcpus: tuple[int, int] = (1, 1)) -> None:
        """Define and start one tiny domain with a qcow2 disk (vda) and a tap NIC, and
        ``extra_disks`` given as (target, format, image), whose driver element gets
        ``extra_driver`` (attributes, e.g. `` io='native' cache='none'``).
        ``image_ready``: the image exists where libvirtd sees it (not where we do).
        ``acpi``: PCI hot-plug needs it (attach-disk --live). ``vcpus``: (current,
        maximum); a maximum above current leaves room for ``setvcpus --live``.

        Tap names are host-wide: two daemons side by side need distinct ``nic`` names.
        """
        image = (image_dir or self.base / "images") / f"{name}.qcow2"
        if not image_ready and not image.exists():
            _run("qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M")
        xml_path = self.base / "images" / f"{name}.xml"
        xml_path.write_text(self.domain_xml(name, tag, nic or f"lt{len(self.domains)}", image,
                                            extra_disks, extra_driver, acpi, vcpus))
        _run("virsh", "-c", self.uri, "define", str(xml_path))
        _run("virsh", "-c", self.uri, "start", name)
        self.domains.append(name)

    def remove(self, name: str) -> None:
        """Destroy and undefine one domain (a test's own, beside the session's)."""
        for verb in ("destroy", "undefine"):
            subprocess.run(["virsh", "-c", self.uri, verb, name], capture_output=True,
                           timeout=30, check=False)
        if name in self.domains:
            self.domains.remove(name)

    def qemu_pid(self, name: str) -> int:
        """The QEMU process of a running domain."""
        return int((self.base / "run" / "qemu" / f"{name}.pid").read_text().strip())

    def freeze(self, name: str) -> None:
        """SIGSTOP the domain's QEMU: its monitor stops answering, as in a storage stall."""
        os.kill(self.qemu_pid(name), signal.SIGSTOP)
        self.frozen.add(name)

    def thaw(self, name: str) -> None:
        """SIGCONT the domain's QEMU."""
        try:
            os.kill(self.qemu_pid(name), signal.SIGCONT)
        except (ProcessLookupError, FileNotFoundError):
            pass
        self.frozen.discard(name)

    def wedge(self, name: str, fifo: Path, qemu: bool = False) -> subprocess.Popen[bytes]:
        """Dump test-driver domain ``name`` into a FIFO nobody reads: libvirtd holds the
        domain's lock until the FIFO is read (``release``), as a stuck call would.
        ``qemu``: a QEMU domain instead (``--live``: it keeps running). The qemu driver
        opens the FIFO holding the domain's object lock (measured on libvirt 9.0: ``virsh
        list`` and its ``domstats`` hang, other domains' answer; its QEMU idles in poll,
        so /proc does not see it frozen)."""
        if not fifo.exists():
            os.mkfifo(fifo)
        cmd = ["virsh", "-q", "-c", self.uri, "dump", "--live", name, str(fifo)] if qemu else \
            ["virsh", "-q", "-c", self.test_uri, "dump", name, str(fifo)]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @staticmethod
    def release(fifo: Path, dump: subprocess.Popen[bytes]) -> None:
        """Read the FIFO: the dump finishes and the domain's lock is free again."""
        with open(fifo, "rb") as fh:
            fh.read()
        dump.wait(timeout=30)

    def drop_clients(self, pids: set[int]) -> int:
        """Disconnect every libvirtd client of these processes (virt-admin), as a network
        blip or a libvirtd that closes a connection would; return how many."""
        listing = _run("virt-admin", "-c", self.admin_uri, "srv-clients-list", "libvirtd")
        dropped = 0
        for line in listing.splitlines():
            fields = line.split()
            if not fields or not fields[0].isdigit():
                continue
            info = _run("virt-admin", "-c", self.admin_uri, "client-info", "libvirtd",
                        fields[0])
            pid = re.search(r"unix_process_id\s*:\s*(\d+)", info)
            if pid and int(pid.group(1)) in pids:
                subprocess.run(["virt-admin", "-c", self.admin_uri, "client-disconnect",
                                "libvirtd", fields[0]], capture_output=True, check=False)
                dropped += 1
        return dropped

    def busy_workers(self) -> int:
        """libvirtd worker threads busy now (nWorkers - freeWorkers)."""
        out = _run("virt-admin", "-c", self.admin_uri, "srv-threadpool-info", "libvirtd")
        values = dict(re.findall(r"(\w+)\s*:\s*(\d+)", out))
        return int(values["nWorkers"]) - int(values["freeWorkers"])


STALLFS = Path(__file__).with_name("stallfs.py")


class StallStore:
    """A FUSE datastore (tests/stallfs.py, Debian's python3-fusepy) that can stop answering.

    Mount it before the private libvirtd starts: libvirtd's mount namespace copies the
    host's mounts when it is made, so QEMU and the collector see the same filesystem.
    """

    def __init__(self, base: Path, inside: int | None = None) -> None:
        """``inside``: mount it in the mount namespace of that process only (libvirtd's:
        QEMU sees it, a collector in the host's namespace does not)."""
        self.back = base / "back"
        self.mount = base / "mnt"
        self.control = base / "stalled"
        self.inside = inside
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StallStore:
        """Mount; wait until the mount answers."""
        for d in (self.back, self.mount):
            d.mkdir(parents=True, exist_ok=True)
        cmd = ["/usr/bin/python3", str(STALLFS), str(self.back), str(self.mount),
               str(self.control)]
        if self.inside is not None:
            cmd = ["nsenter", "-t", str(self.inside), "-m", *cmd]
        self.proc = subprocess.Popen(cmd, start_new_session=True)
        mounts = Path(f"/proc/{self.inside or 'self'}/mounts")
        limit = time.monotonic() + 20
        while time.monotonic() < limit:
            if f" {self.mount} fuse" in mounts.read_text():
                return self
            if self.proc.poll() is not None:
                raise HarnessError("stallfs exited (is python3-fusepy installed?)")
            time.sleep(0.1)
        raise HarnessError("stallfs did not mount within 20 s")

    def stall(self) -> None:
        """From now on every request waits, as on a hard NFS mount whose server died."""
        self.control.touch()

    def resume(self) -> None:
        """Answer again (waiting requests proceed)."""
        self.control.unlink(missing_ok=True)

    def stop(self) -> None:
        """Resume, unmount, end the filesystem process."""
        self.resume()
        where = [] if self.inside is None or self.proc is None else [
            "nsenter", "-t", str(self.proc.pid), "-m"]
        subprocess.run([*where, "umount", "-l", str(self.mount)], capture_output=True,
                       check=False)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
