"""A real filesystem that stops answering: what a dead NFS server looks like to QEMU.

Run with Debian's python3 (python3-fusepy): ``stallfs.py BACKING MOUNTPOINT CONTROL``.
A passthrough of BACKING at MOUNTPOINT, mounted with attribute and entry timeouts 0
so every stat() of an image reaches it. While the file CONTROL exists, every request
waits (like a hard NFS mount whose server went away); once it is removed, they all
proceed. (A file, not a signal: Python cannot run a handler while libfuse's loop
holds the main thread.) Runs in the foreground until unmounted.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import Any

import fusepy  # type: ignore[import-not-found]


class StallFS(fusepy.Operations):  # type: ignore[misc]
    """Passthrough whose every operation waits while the filesystem is stalled."""

    def __init__(self, root: str, control: str) -> None:
        self.root = root
        self.control = control

    def __call__(self, op: str, *args: Any) -> Any:
        while os.path.exists(self.control):  # a stalled server: no answer, no error
            time.sleep(0.05)
        if not hasattr(self, op):
            raise fusepy.FuseOSError(errno.ENOSYS)
        try:
            return getattr(self, op)(*args)
        except OSError as exc:
            raise fusepy.FuseOSError(exc.errno or errno.EIO) from None

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._path(path))
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode",
                                            "st_mtime", "st_nlink", "st_size", "st_uid",
                                            "st_blocks")}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path: str, flags: int) -> int:
        return os.open(self._path(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.truncate(self._path(path), length)

    def flush(self, path: str, fh: int) -> None:
        pass

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(fh)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def statfs(self, path: str) -> dict[str, Any]:
        st = os.statvfs(self._path(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                            "f_favail", "f_ffree", "f_files", "f_flag",
                                            "f_frsize", "f_namemax")}

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._path(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._path(path), uid, gid)

    def utimens(self, path: str, times: Any = None) -> None:
        os.utime(self._path(path), times)

    def unlink(self, path: str) -> None:
        os.unlink(self._path(path))


def main() -> None:
    backing, mountpoint, control = sys.argv[1:4]
    fusepy.FUSE(StallFS(backing, control), mountpoint, foreground=True, nothreads=False,
                allow_other=True, attr_timeout=0, entry_timeout=0, negative_timeout=0,
                fsname="stallfs")


if __name__ == "__main__":
    main()
