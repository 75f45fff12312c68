"""Is each datastore answering? One stat() per datastore, off the sampling path, never per VM.

On a hard NFS mount (or a FUSE filesystem) that stopped answering, QEMU runs on
until something asks for block info: libvirt's bulk block group makes QEMU
stat() the image, and that stat() is what hangs QEMU's main thread and, with
it, the monitor. So before asking a domain for block info, a worker knows
whether the filesystems of its images answer: every cycle it stats one image
per mount on a thread of its own. A probe stuck in the kernel stays the only
one for its datastore until it returns; while it is out, that datastore is dead.

The same thread then stats the datastore's other images: their size and the
space they take are what virDomainGetBlockInfo (and so collectd) reports as a
file-backed disk's physical size and allocation, and the bulk stats do not
carry them (see libvirt_stats.as_block_info).

An image is looked at where QEMU sees it: ``/proc/<qemu pid>/root/<path>``, in
QEMU's own mount namespace, and its datastore is the filesystem QEMU's
mountinfo puts it on. A collector in a container or a unit with private mounts
would otherwise stat a file of its own view (or none) and call a dead store
alive. Without QEMU's pid, the collector's view is all there is.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vpartcollect.autotag import store_name
from vpartcollect.mounts import Mount, mount_of


def is_file_image(source: str) -> bool:
    """Whether a disk source is an image file (not a device node, not a network disk)."""
    return source.startswith("/") and not source.startswith("/dev/")


@dataclass(frozen=True)
class Image:
    """A disk image: its path as libvirt names it, and where to stat it from here."""

    path: str
    look_at: str


def datastores(disk_sources: Iterable[str], mounts: Sequence[Mount],
               root: str = "") -> dict[str, list[Image]]:
    """{datastore: its images} for file-backed disks (device nodes and network disks
    are not stat()ed by QEMU to report their size). ``mounts`` and ``root`` are QEMU's
    view (its mountinfo and ``/proc/<pid>/root``), or the collector's own."""
    out: dict[str, list[Image]] = {}
    for source in disk_sources:
        if not is_file_image(source):
            continue
        mount = mount_of(source, mounts)
        if mount is None:
            continue
        image = Image(source, root + source)
        if image not in out.get(mount.store, []):
            out.setdefault(mount.store, []).append(image)
    return out


def store_names(stores: dict[str, list[Image]], mounts: Sequence[Mount]) -> dict[str, str]:
    """{datastore: its name in the metrics}, from the mount each image is on. Not from
    every mount of the store's device: a bind mount of one of its directories
    (``/run/netns`` on ``/``) carries the same device and would name it."""
    out: dict[str, str] = {}
    for store, images in stores.items():
        for image in images:
            mount = mount_of(image.path, mounts)
            if mount is not None and mount.store == store:
                out.setdefault(store, store_name(mount))
    return out


Sizes = dict[str, tuple[int, int]]  # image -> (st_size, st_blocks * 512)


class _Probe:
    def __init__(self, images: Sequence[Image], look: Callable[[str], object],
                 sizes: Sizes) -> None:
        self.started = time.monotonic()
        self.finished = 0.0  # when it returned (monotonic), once ``done``
        self.done = threading.Event()
        threading.Thread(target=self._look, args=(images, look, sizes),
                         name="datastore-probe", daemon=True).start()

    def __repr__(self) -> str:
        state = "answered" if self.done.is_set() else "out"
        return f"<Probe {state}, started {time.monotonic() - self.started:.2f} s ago>"

    def _look(self, images: Sequence[Image], look: Callable[[str], object],
              sizes: Sizes) -> None:
        try:
            for image in images:
                try:
                    st = look(image.look_at)
                except (OSError, ValueError):
                    sizes.pop(image.path, None)  # an answer, even "no such file": it responds
                    continue
                if isinstance(st, os.stat_result) and stat.S_ISREG(st.st_mode):
                    sizes[image.path] = (st.st_size, st.st_blocks * 512)
        finally:
            self.finished = time.monotonic()
            self.done.set()


class Probes:
    """The latest probe of every datastore; at most one running per datastore."""

    def __init__(self, timeout: float, look: Callable[[str], object] = os.stat) -> None:
        self.timeout = timeout
        self.look = look  # what QEMU does to an image when asked for its size
        self._probes: dict[str, _Probe] = {}
        self._round: list[_Probe] = []
        self._answered: dict[str, float] = {}  # datastore -> when a probe of it last returned
        self.sizes: Sizes = {}  # written by the probe threads, one key at a time

    def start(self, paths: dict[str, list[Image]]) -> None:
        """Probe each datastore of ``paths`` ({datastore: its images}) unless a probe is
        still out; the first image tells whether it answers, all get their sizes read."""
        self._round = []
        for store in [s for s, p in self._probes.items() if s not in paths and p.done.is_set()]:
            del self._probes[store]
            self._answered.pop(store, None)
        wanted = {image.path for images in paths.values() for image in images}
        for path in [p for p in self.sizes if p not in wanted]:
            del self.sizes[path]
        self.recheck(paths)

    def recheck(self, paths: dict[str, list[Image]]) -> None:
        """Probe these datastores again now, unless a probe is still out, forgetting
        nothing of the others (a call that hung may mean one just died)."""
        for store, images in paths.items():
            running = self._probes.get(store)
            if running is not None and not running.done.is_set():
                continue  # stuck in the kernel: never a second one
            if running is not None:
                self._answered[store] = running.finished
            probe = self._probes[store] = _Probe(images, self.look, self.sizes)
            self._round.append(probe)

    def settle(self) -> None:
        """Wait (at most ``timeout``) for the probes this round started."""
        for probe in self._round:
            probe.done.wait(max(0.0, probe.started + self.timeout - time.monotonic()))
        self._round = []

    def health(self) -> dict[str, tuple[bool, float]]:
        """{datastore: (answering, seconds since a probe of it last returned; 0 while it
        answers)}: a dead one counts from its last answer, or from its first probe."""
        dead, now = self.dead(), time.monotonic()
        out = {}
        for store, probe in self._probes.items():
            since = probe.finished if probe.done.is_set() else self._answered.get(
                store, probe.started)
            out[store] = (store not in dead, 0.0 if store not in dead else now - since)
        return out

    def dead(self) -> set[str]:
        """Datastores whose probe has been out longer than ``timeout``."""
        now = time.monotonic()
        return {store for store, p in self._probes.items()
                if not p.done.is_set() and now - p.started >= self.timeout}
