"""Does each datastore answer? One probe per store, off the sampling path; image sizes."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from require import require_or_fail

from vpartcollect.mounts import Mount, read_mountinfo
from vpartcollect.worker.datastores import Image, Probes, datastores, store_names


def here(*paths: str) -> list[Image]:
    """Images seen from the collector's own view (no QEMU namespace)."""
    return [Image(p, p) for p in paths]


def test_datastores_are_mounts_of_file_images() -> None:
    mounts = [Mount("/dev/sda1", "/", "ext4"), Mount("nas:/vms", "/mnt/nfs", "nfs4"),
              Mount("stallfs", "/mnt/nfs/fuse", "fuse")]
    got = datastores(["/mnt/nfs/a.qcow2", "/mnt/nfs/b.qcow2", "/mnt/nfs/fuse/c.img",
                      "/var/lib/d.img", "/dev/sdb", "pool/vol", ""], mounts)
    assert got == {"/mnt/nfs": here("/mnt/nfs/a.qcow2", "/mnt/nfs/b.qcow2"),
                   "/mnt/nfs/fuse": here("/mnt/nfs/fuse/c.img"), "/": here("/var/lib/d.img")}


def test_images_are_looked_at_where_qemu_sees_them() -> None:
    """QEMU's mount namespace: its mountinfo names the filesystem (by device, the same
    from every namespace) and its /proc root is where the image is stat()ed from here."""
    mounts = [Mount("/dev/vda1", "/", "ext4", "253:1"), Mount("stallfs", "/srv", "fuse", "0:53")]
    got = datastores(["/srv/a.qcow2", "/var/b.img"], mounts, root="/proc/4242/root")
    assert got == {"dev:0:53": [Image("/srv/a.qcow2", "/proc/4242/root/srv/a.qcow2")],
                   "dev:253:1": [Image("/var/b.img", "/proc/4242/root/var/b.img")]}


def test_a_store_is_named_by_its_images_mount_not_a_bind_mount_of_it(tmp_path: Path) -> None:
    """A bind mount of one of the root filesystem's directories (``ip netns`` makes
    ``/run/netns`` one) carries the root's device: the images on ``/`` were reported as
    ``datastore_answering-_run_netns``. Staged with a real bind mount, read from this
    process's own mountinfo."""
    require_or_fail(os.geteuid() == 0, "root: a bind mount")
    source, target = tmp_path / "dir", tmp_path / "bind"
    source.mkdir()
    target.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        mounts = read_mountinfo(Path("/proc/self/mountinfo").read_text())
        image = "/var/lib/vpc-no-such/d.qcow2"
        on = max((m for m in mounts if image.startswith(m.target.rstrip("/") + "/")
                  or m.target == "/"), key=lambda m: len(m.target))
        assert [m.dev for m in mounts if m.target == str(target)] == [on.dev], (
            "the bind mount is not of the filesystem under /var/lib: nothing staged")
        stores = datastores([image], mounts)
        assert store_names(stores, mounts) == {on.store: on.target}  # not str(target)
    finally:
        subprocess.run(["umount", str(target)], check=False)


def test_probes_answer_and_never_double_up(tmp_path: Path) -> None:
    probes = Probes(timeout=0.5)
    probes.start({"/": here(str(tmp_path)), "/gone": here(str(tmp_path / "missing"))})
    probes.settle()
    assert probes.dead() == set()  # "no such file" is an answer too
    # A store that does not answer, shown with a FIFO: opening one waits for a writer.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    looks: list[str] = []

    def look(path: str) -> None:
        looks.append(path)
        if path == str(fifo):
            Path(path).read_bytes()

    probes = Probes(timeout=0.2, look=look)
    probes.start({"/dead": here(str(fifo)), "/fine": here(str(tmp_path))})
    probes.settle()
    assert probes.dead() == {"/dead"}
    probes.start({"/dead": here(str(fifo)), "/fine": here(str(tmp_path))})
    probes.settle()
    # The health metrics: answering or not, and for how long not (since its first probe:
    # it never answered), while the store that answers says 0.
    health = probes.health()
    assert health["/fine"] == (True, 0.0)
    assert not health["/dead"][0] and 0.2 <= health["/dead"][1] < 5
    assert looks.count(str(fifo)) == 1  # still out: never a second probe of that store
    assert looks.count(str(tmp_path)) == 2
    with open(fifo, "w"):
        pass  # the store answers
    time.sleep(0.1)
    assert probes.dead() == set()
    assert probes.health()["/dead"] == (True, 0.0)
    probes.start({"/dead": here(str(fifo))})
    assert looks.count(str(fifo)) == 2
    with open(fifo, "w"):
        pass  # let that probe go too


def test_a_store_that_dies_after_its_probe_is_seen_by_a_recheck(tmp_path: Path) -> None:
    """A call hung: the worker asks the stores of its domains again, keeping the rest."""
    dead = threading.Event()
    release = threading.Event()
    image, other = tmp_path / "a.img", tmp_path / "b.img"
    image.write_bytes(b"x" * 100)
    other.write_bytes(b"y" * 10)

    def look(path: str) -> os.stat_result:
        if dead.is_set() and path == str(image):
            release.wait(5)  # the store stopped answering
        return os.stat(path)

    probes = Probes(timeout=0.2, look=look)
    probes.start({"/nfs": here(str(image)), "/local": here(str(other))})
    probes.settle()
    assert probes.dead() == set() and set(probes.sizes) == {str(image), str(other)}
    dead.set()  # it dies after this cycle's probe answered
    probes.recheck({"/nfs": here(str(image))})
    probes.settle()
    assert probes.dead() == {"/nfs"}
    assert probes.sizes[str(other)][0] == 10  # the other store's sizes are kept
    release.set()


def test_probes_read_the_size_of_every_image_of_a_store(tmp_path: Path) -> None:
    sparse, full = tmp_path / "sparse.img", tmp_path / "full.img"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 20)
    full.write_bytes(b"x" * 8192)
    probes = Probes(timeout=1.0)
    probes.start({"/": here(str(sparse), str(full), str(tmp_path / "missing"))})
    probes.settle()
    assert probes.sizes[str(sparse)] == (1 << 20, os.stat(sparse).st_blocks * 512)
    assert probes.sizes[str(full)][0] == 8192 and probes.sizes[str(full)][1] >= 8192
    assert str(tmp_path / "missing") not in probes.sizes
    probes.start({"/": here(str(full))})  # an image no disk uses any more is forgotten
    probes.settle()
    assert list(probes.sizes) == [str(full)]
