"""Is each datastore answering? One stat() per datastore, off the sampling path, never per VM.

On a hard NFS mount (or a FUSE filesystem) that stopped answering, QEMU runs on
until something asks for block info: libvirt's bulk block group makes QEMU
stat() the image, and that stat() is what hangs QEMU's main thread and, with
it, the monitor. So before asking a domain for block info, a worker knows
whether the filesystems of its images answer: every cycle it stats one image
per mount on a thread of its own. A probe stuck in the kernel stays the only
one for its datastore until it returns; while it is out, that datastore is dead.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from vpartcollect.autotag import Mount, mount_of


def datastores(disk_sources: Iterable[str], mounts: Sequence[Mount]) -> dict[str, str]:
    """{mount point: an image on it} for file-backed disks (device nodes and network
    disks are not stat()ed by QEMU to report their size)."""
    out: dict[str, str] = {}
    for source in disk_sources:
        if not source.startswith("/") or source.startswith("/dev/"):
            continue
        mount = mount_of(source, mounts)
        if mount is not None:
            out.setdefault(mount.target, source)
    return out


class _Probe:
    def __init__(self, path: str, look: Callable[[str], object]) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        threading.Thread(target=self._look, args=(path, look), name="datastore-probe",
                         daemon=True).start()

    def _look(self, path: str, look: Callable[[str], object]) -> None:
        try:
            look(path)
        except (OSError, ValueError):
            pass  # an answer, even "no such file": the filesystem responds
        finally:
            self.done.set()


class Probes:
    """The latest probe of every datastore; at most one running per datastore."""

    def __init__(self, timeout: float, look: Callable[[str], object] = os.stat) -> None:
        self.timeout = timeout
        self.look = look  # what QEMU does to an image when asked for its size
        self._probes: dict[str, _Probe] = {}
        self._round: list[_Probe] = []

    def start(self, paths: dict[str, str]) -> None:
        """Probe each datastore of ``paths`` ({datastore: path}) unless a probe is still out."""
        self._round = []
        for store in [s for s, p in self._probes.items() if s not in paths and p.done.is_set()]:
            del self._probes[store]
        for store, path in paths.items():
            running = self._probes.get(store)
            if running is not None and not running.done.is_set():
                continue  # stuck in the kernel: never a second one
            probe = self._probes[store] = _Probe(path, self.look)
            self._round.append(probe)

    def settle(self) -> None:
        """Wait (at most ``timeout``) for the probes this round started."""
        for probe in self._round:
            probe.done.wait(max(0.0, probe.started + self.timeout - time.monotonic()))
        self._round = []

    def dead(self) -> set[str]:
        """Datastores whose probe has been out longer than ``timeout``."""
        now = time.monotonic()
        return {store for store, p in self._probes.items()
                if not p.done.is_set() and now - p.started >= self.timeout}
