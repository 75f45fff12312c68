"""The exporter process: serves the board over HTTP, fed by the supervisor's frames.

It lives in a process of its own (like a spooler): the supervisor forks workers
and must not run threads, and a scrape (rendering a thousand domains, a slow
client, a TLS handshake, a bcrypt check) must never take the supervisor's time.
Here one thread reads the supervisor's frames into the board, and each HTTP
connection has a thread of its own, so an idle or slow client holds up only itself.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import os
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn

import msgpack
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from vpartcollect import wire
from vpartcollect.daemon import OneLineFormatter, die_with_parent
from vpartcollect.output.prometheus.board import Board
from vpartcollect.output.prometheus.families import exposition
from vpartcollect.output.prometheus.webconfig import Authenticator, Current, WebConfig

log = logging.getLogger(__name__)

LANDING = (b"<html><head><title>vpartcollect</title></head><body><h1>vpartcollect</h1>"
           b"<p>libvirt domain statistics, sampled by vpartcollect.</p>"
           b"<p><a href=\"/metrics\">Metrics</a></p></body></html>\n")
CLIENT_TIMEOUT = 10.0  # seconds a connection may stay silent (a request, a handshake)


@dataclass(frozen=True)
class ExporterSettings:
    """What the exporter process needs from the configuration."""

    interval: float
    timestamps: bool
    instances: int
    up_within: float  # libvirt_up: every instance finished a tick this recently
    web_config: str | None = None
    first_web: WebConfig | None = None  # read at start by the supervisor (exit 2 if bad)


class Exporter:
    """The board behind a lock, and what one scrape renders."""

    def __init__(self, settings: ExporterSettings) -> None:
        self.settings = settings
        self.board = Board()
        self.lock = threading.Lock()
        self.web = (Current(settings.web_config, settings.first_web or WebConfig())
                    if settings.web_config else None)
        self.auth = Authenticator()

    def frame(self, obj: Any) -> None:
        """One frame from the supervisor."""
        kind = obj[0]
        with self.lock:
            if kind == "results":
                msg = wire.decode(msgpack.unpackb(obj[2], raw=False))
                assert isinstance(msg, wire.Results)
                for d in msg.domains:
                    self.board.sample(int(obj[1]), msg.tick, d)
            elif kind == "done":
                self.board.done(int(obj[1]), float(obj[2]), dict(obj[3]), time.monotonic())
            elif kind == "collector":
                self.board.collector_values(dict(obj[1]), float(obj[2]))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The body of one scrape and its content type (negotiated from ``accept``)."""
        s = self.settings
        with self.lock:  # a copy of references: the rendering runs without the lock
            entries = self.board.snapshot()
            instances = dict(self.board.instances)
            collector = self.board.collector
            up = self.board.up(time.monotonic(), s.instances, s.up_within)
        families = list(exposition(entries, instances, collector, s.interval, s.timestamps,
                                   up))

        class Scrape(Collector):
            def collect(self) -> Any:
                return families
        encoder, content_type = choose_encoder(accept or "")
        return encoder(Scrape()), content_type  # type: ignore[arg-type]


class Handler(BaseHTTPRequestHandler):
    """GET /metrics, GET /, anything else 404."""

    server: Server
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        if "gzip" in (self.headers.get("Accept-Encoding") or "") and code == 200:
            body = gzip.compress(body, compresslevel=1)
            extra = {**(extra or {}), "Content-Encoding": "gzip"}
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        exporter = self.server.exporter
        if exporter.web is None:
            return True
        users = exporter.web.get().users
        if not users:
            return True
        given = self.headers.get("Authorization") or ""
        if given[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(given[6:], validate=True) \
                    .decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if user and exporter.auth.check(users, user, password):
                return True
        self._send(401, b"Unauthorized\n",
                   extra={"WWW-Authenticate": 'Basic realm="vpartcollect"'})
        return False

    def do_GET(self) -> None:  # http.server's name
        """Serve one request."""
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self.server.exporter.render(self.headers.get("Accept"))
            self._send(200, body, content_type)
        elif path == "/":
            self._send(200, LANDING, "text/html; charset=utf-8")
        else:
            self._send(404, b"Not Found\n")

    do_HEAD = do_GET


class Server(ThreadingHTTPServer):
    """A threading HTTP server on a socket bound by the supervisor; TLS, when the web
    configuration asks for it, is set up in the connection's own thread."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, listening: socket.socket, exporter: Exporter) -> None:
        super().__init__(listening.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening
        self.exporter = exporter

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: the TLS handshake there, under a deadline."""
        web = self.exporter.web.get() if self.exporter.web is not None else None
        if web is not None and web.tls is not None:
            request.settimeout(CLIENT_TIMEOUT)
            try:
                request = web.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("%s: TLS handshake failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-request is no traceback."""
        log.debug("%s: request failed", client_address)


def exporter_main(listening: socket.socket, chan: socket.socket,
                  settings: ExporterSettings, parent_pid: int) -> NoReturn:
    """The exporter process: serve HTTP in threads, read the supervisor's frames here;
    exit when the supervisor's end closes (or on SIGTERM)."""
    code = 0
    try:
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)  # the supervisor's signal pipe is not ours
        die_with_parent()
        if os.getppid() != parent_pid:
            os._exit(1)
        where = listening.getsockname()
        for handler in logging.getLogger().handlers:
            handler.setFormatter(OneLineFormatter(
                f"vpartcollect[%(process)d] prometheus {where[0]}:{where[1]}: "
                "%(levelname)s: %(message)s"))
        exporter = Exporter(settings)
        server = Server(listening, exporter)
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=wire.MAX_FRAME_BYTES)
        chan.setblocking(True)
        while data := chan.recv(1 << 20):
            unpacker.feed(data)
            for obj in unpacker:
                try:
                    exporter.frame(obj)
                except (ValueError, TypeError, KeyError, IndexError, AssertionError) as exc:
                    log.warning("prometheus: a frame left out: %s", exc)
    except Exception as exc:  # one line; the supervisor starts us again
        log.error("prometheus exporter: %s: %s", type(exc).__name__, exc)
        code = 1
    os._exit(code)
