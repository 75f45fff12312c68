"""A private, real carbon-cache (Debian's graphite-carbon) on loopback, and whisper reads."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import whisper


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (someone may take it before it
    is used: PrivateCarbon.start retries with fresh ports when carbon cannot bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a TCP socket listening on ``port`` (/proc/net/tcp)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for row in table:
        fields = row.split()
        if (fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
                and fields[9] in inodes):
            return True
    return False


class Miss(NamedTuple):
    """A line carbon does not hold with the value we sent (``got``: what it holds)."""

    path: str
    ts: int
    value: float
    got: float | None

    def __str__(self) -> str:
        return f"{self.path}@{self.ts}={self.value} (carbon: {self.got})"


class PrivateCarbon:
    """carbon-cache with its own config, storage and ports under ``base``."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.base = base.resolve()
        self.fixed_port = port is not None  # and once started: a client knows the port
        self.port = port or free_port()
        self.query_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        (self.base / "storage" / "whisper").mkdir(parents=True, exist_ok=True)
        (self.base / "log").mkdir(exist_ok=True)
        (self.base / "storage-schemas.conf").write_text(
            "[all]\npattern = .*\nretentions = 1s:2h\n")
        self._configure()

    def _configure(self) -> None:
        (self.base / "carbon.conf").write_text(f"""[cache]
STORAGE_DIR = {self.base}/storage
LOCAL_DATA_DIR = {self.base}/storage/whisper
WHITELISTS_DIR = {self.base}/lists
CONF_DIR = {self.base}
LOG_DIR = {self.base}/log
PID_DIR = {self.base}
ENABLE_LOGROTATION = False
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {self.port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {free_port()}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {self.query_port}
ENABLE_TAGS = False
LOG_UPDATES = False
LOG_CREATES = False
WHISPER_AUTOFLUSH = False
CACHE_WRITE_STRATEGY = sorted
""")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> PrivateCarbon:
        """Start carbon-cache in the foreground of a child; wait until it accepts.

        A port of ours taken meanwhile by someone else (free_port checks, then carbon
        binds): carbon exits, and it starts again on fresh ports, three times at most."""
        for attempt in range(3):
            try:
                return self._start()
            except RuntimeError as exc:
                last = (attempt == 2 or self.fixed_port
                        or "Address already in use" not in str(exc))
                if last:
                    raise
                self.port, self.query_port = free_port(), free_port()
                self._configure()
            finally:
                self.fixed_port = self.fixed_port or self.proc is not None
        raise AssertionError("unreachable")

    def _start(self) -> PrivateCarbon:
        log = open(self.base / "log" / "console.log", "ab")  # noqa: SIM115 - child's stdio
        self.proc = subprocess.Popen(
            ["carbon-cache", f"--config={self.base}/carbon.conf", "--nodaemon",
             f"--pidfile={self.base}/carbon.pid", "start"], stdout=log, stderr=log,
            start_new_session=True)
        limit = time.monotonic() + 30
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError((self.base / "log" / "console.log").read_text())
            if listens(self.proc.pid, self.port):  # carbon itself, not whoever took it
                return self
            time.sleep(0.1)
        raise RuntimeError("carbon-cache did not listen within 30 s")

    def stop(self) -> None:
        """SIGTERM carbon-cache (it writes its cache to whisper first) and wait."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            (self.base / "carbon.pid").unlink(missing_ok=True)

    def fetch(self, path: str, start: int, end: int) -> dict[int, float]:
        """Points of a metric path between start and end (inclusive), as stored."""
        wsp = self.base / "storage" / "whisper" / (path.replace(".", "/") + ".wsp")
        try:
            (first, _last, step), values = whisper.fetch(str(wsp), start - 1, end + 1)
        except (FileNotFoundError, whisper.CorruptWhisperFile):
            return {}  # not there, or being created by carbon this moment
        return {first + i * step: v for i, v in enumerate(values)
                if v is not None and start <= first + i * step <= end}

    def settle(self, lines: list[tuple[str, float, float]], timeout: float = 30) -> None:
        """Wait until carbon has written what it holds of ``lines`` to whisper.

        carbon-cache stopped right after receiving points may not write its cache
        out: that loss is carbon's own, so tests let it settle before stopping it.
        Settled: no line missing from whisper is in carbon's cache, and the lines missing
        are the same at three looks a second apart (what was on its socket is in). Carbon
        writes its cache a metric at a time, in any order: one path's newest point
        written says nothing of the others.
        """
        limit = time.monotonic() + timeout
        looks: list[list[Miss]] = []
        while time.monotonic() < limit:
            looks = [*looks[-2:], self.missing(lines)]
            if len(looks) == 3 and looks[0] == looks[1] == looks[2] and not any(
                    stamps & self._cached(path) for path, stamps in _by_path(looks[2]).items()):
                return
            time.sleep(1)

    def missing(self, lines: list[tuple[str, float, float]]) -> list[Miss]:
        """Lines (as written to stdout) whose point carbon does not hold with the same value."""
        by_path: dict[str, dict[int, float]] = {}
        for path, value, ts in lines:
            by_path.setdefault(path, {})[int(ts)] = value
        missing: list[Miss] = []
        for path, points in by_path.items():
            stored = self.fetch(path, min(points), max(points))
            for ts, value in points.items():
                got = stored.get(ts)
                if got is None or abs(got - value) > 1e-6 * max(1.0, abs(value)):
                    missing.append(Miss(path, ts, value, got))
        return missing

    def holds(self, path: str, ts: int) -> bool:
        """Whether carbon has the point of ``path`` at ``ts``: in whisper, or still in its
        cache (asked over carbonlink, the cache-query protocol graphite-web uses)."""
        return bool(self.fetch(path, ts, ts)) or ts in self._cached(path)

    def _cached(self, path: str) -> set[int]:
        """Timestamps of ``path``'s points in carbon's cache, not yet in whisper."""
        request = pickle.dumps({"type": "cache-query", "metric": path}, protocol=2)
        with socket.create_connection(("127.0.0.1", self.query_port), timeout=5) as sock:
            sock.sendall(struct.pack("!L", len(request)) + request)
            size = struct.unpack("!L", _recv(sock, 4))[0]
            reply = pickle.loads(_recv(sock, size))  # our own carbon, on loopback
        return {int(t) for t, _v in reply.get("datapoints", [])}

    def paths(self) -> list[str]:
        """Every metric path carbon has a whisper file for."""
        root = self.base / "storage" / "whisper"
        return sorted(".".join(p.relative_to(root).with_suffix("").parts)
                      for p in root.rglob("*.wsp"))


def _by_path(missing: list[Miss]) -> dict[str, set[int]]:
    """{path: timestamps} of ``missing``: carbon's cache is asked once a path."""
    points: dict[str, set[int]] = {}
    for m in missing:
        points.setdefault(m.path, set()).add(m.ts)
    return points


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("carbon closed the cache-query connection")
        data += chunk
    return data
