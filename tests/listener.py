"""A plaintext receiver on loopback for tests that check Graphite lines keep arriving
(not what carbon stores: tests/carbon.py runs a real carbon-cache for that)."""

from __future__ import annotations

import socket
import threading
from collections import defaultdict


class Listener:
    """A plaintext receiver on loopback: every line it was sent, by timestamp."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.by_ts: dict[int, int] = defaultdict(int)
        self.accepted = 0  # connections made to it
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        rest = b""
        while data := conn.recv(1 << 16):
            *lines, rest = (rest + data).split(b"\n")
            for line in lines:
                self.by_ts[int(float(line.rsplit(b" ", 1)[1]))] += 1
        conn.close()  # as carbon does at the sender's end: the sender's finish sees it

    def ticks(self) -> list[int]:
        return sorted(self.by_ts)
