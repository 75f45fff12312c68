"""The exporter process: serves the board over HTTP, fed by the supervisor's frames.

It lives in a process of its own (like a spooler): the supervisor forks workers
and must not run threads, and a scrape (rendering a thousand domains, a slow
client, a TLS handshake, a bcrypt check) must never take the supervisor's time.
Here one thread reads the supervisor's frames into the board, and each HTTP
connection has a thread of its own, so an idle or slow client holds up only itself;
limits.py bounds what a client may cost (head bytes and time, connections). A scrape
body is rendered once per change of the board and format, and sent to every scrape
until the next change. The process runs at a lower CPU priority (NICE): on a busy
host the supervisor and its workers, the data path, win the CPU.
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
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn

import msgpack
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from vpartcollect import wire
from vpartcollect.daemon import OneLineFormatter, die_with_parent
from vpartcollect.output.prometheus.board import Board
from vpartcollect.output.prometheus.families import exposition
from vpartcollect.output.prometheus.limits import Conn, Connections, HeadReader, HeadTooLarge
from vpartcollect.output.prometheus.webconfig import Authenticator, Current, WebConfig

log = logging.getLogger(__name__)

LANDING = (b"<html><head><title>vpartcollect</title></head><body><h1>vpartcollect</h1>"
           b"<p>libvirt domain statistics, sampled by vpartcollect.</p>"
           b"<p><a href=\"/metrics\">Metrics</a></p></body></html>\n")
CLIENT_TIMEOUT = 10.0  # seconds a send or a TLS handshake may stall
DRAIN_SECONDS = CLIENT_TIMEOUT  # an old exporter's scrapes in flight: their time to finish
READY_SECONDS = 5.0  # the most a new exporter waits for its board's recap before serving
NICE = 10  # added to the exporter's nice value: the data path first


@dataclass(frozen=True)
class ExporterSettings:
    """What the exporter process needs from the configuration."""

    interval: float
    timestamps: bool
    instances: int
    up_within: float  # libvirt_up: every instance finished a tick this recently
    web_config: str | None = None
    # Read at start by the supervisor (exit 2 if bad). Not compared: it holds an
    # SSLContext (equal only to itself); web_config's path says which file it is.
    first_web: WebConfig | None = field(default=None, compare=False)


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header takes gzip (named or ``*``, with a q above 0:
    ``gzip;q=0`` refuses it)."""
    named: dict[str, float] = {}
    for item in (header or "").split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if coding:
            named[coding.lower()] = q
    return named.get("gzip", named.get("x-gzip", named.get("*", 0.0))) > 0


class Exporter:
    """The board behind a lock, and what one scrape renders."""

    def __init__(self, settings: ExporterSettings) -> None:
        self.settings = settings
        self.board = Board()
        self.lock = threading.Lock()
        self.web = (Current(settings.web_config, settings.first_web or WebConfig())
                    if settings.web_config else None)
        self.auth = Authenticator()
        self.rendering = threading.Lock()  # one render at a time; the others then reuse it
        self.state: tuple[int, bool] | None = None  # (board version, libvirt_up) of bodies
        self.bodies: dict[tuple[str, bool], bytes] = {}  # (content type, gzip) -> body
        self.renders = 0


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
                health = [(str(t), str(i), float(v)) for t, i, v in obj[4]]
                ago = float(obj[5]) if len(obj) > 5 else 0.0  # a recap's (recap.py)
                self.board.done(int(obj[1]), float(obj[2]), dict(obj[3]),
                                time.monotonic() - ago, health)
            elif kind == "collector":
                self.board.collector_values(dict(obj[1]), float(obj[2]))

    def render(self, accept: str | None, gzipped: bool = False) -> tuple[bytes, str]:
        """The body of one scrape and its content type (negotiated from ``accept``),
        gzipped if asked: rendered once per board state, format and encoding."""
        s = self.settings
        encoder, content_type = choose_encoder(accept or "")
        with self.rendering:
            with self.lock:  # a copy of references: the rendering runs without the lock
                state = (self.board.version,
                         self.board.up(time.monotonic(), s.instances, s.up_within))
                if state != self.state:
                    self.state, self.bodies = state, {}
                text = self.bodies.get((content_type, False))
                if text is None:
                    entries = self.board.snapshot()
                    instances = dict(self.board.instances)
                    collector = self.board.collector
                    health = dict(self.board.health)
            if text is None:
                families = list(exposition(entries, instances, collector, s.interval,
                                           s.timestamps, state[1], health))

                class Scrape(Collector):
                    def collect(self) -> Any:
                        return families
                text = self.bodies[content_type, False] = encoder(Scrape())  # type: ignore[arg-type, unused-ignore]
                self.renders += 1
            if not gzipped:
                return text, content_type
            body = self.bodies.get((content_type, True))
            if body is None:
                body = self.bodies[content_type, True] = gzip.compress(text, compresslevel=1)
            return body, content_type


class Handler(BaseHTTPRequestHandler):
    """GET /metrics, GET /, anything else 404."""

    server: Server
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)

    conn: Conn
    rfile: HeadReader

    def setup(self) -> None:
        super().setup()
        self.conn = self.server.local.conn
        self.rfile.close()  # http.server's reader: ours bounds each request head
        self.rfile = HeadReader(self.connection,
                                asked=lambda: self.server.connections.asked(self.conn))

    def handle_one_request(self) -> None:
        """One request; its head within the budget and deadlines of limits.py."""
        self.server.connections.idle(self.conn)
        self.rfile.begin()
        try:
            super().handle_one_request()
        except HeadTooLarge:  # the request line alone (the headers get 431 from http.server)
            self.requestline, self.request_version, self.command = "", "", ""
            self.send_error(431)
            self.close_connection = True

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if self.server.draining.is_set():  # the next request goes to the new exporter
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.connections.answered(self.conn)

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
        self.server.connections.busy(self.conn)
        self.connection.settimeout(CLIENT_TIMEOUT)
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            gzipped = accepts_gzip(self.headers.get("Accept-Encoding"))
            body, content_type = self.server.exporter.render(self.headers.get("Accept"),
                                                             gzipped)
            self._send(200, body, content_type,
                       {"Content-Encoding": "gzip"} if gzipped else None)
        elif path == "/":
            self._send(200, LANDING, "text/html; charset=utf-8")
        else:
            self._send(404, b"Not Found\n")

    do_HEAD = do_GET


class Server(ThreadingHTTPServer):
    """A threading HTTP server on a socket bound by the supervisor, at most
    MAX_CONNECTIONS connections (limits.py); TLS, when the web configuration asks for
    it, is set up in the connection's own thread."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, listening: socket.socket, exporter: Exporter) -> None:
        super().__init__(listening.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listening
        self.exporter = exporter
        self.connections = Connections()
        self.local = threading.local()  # .conn: the connection of this thread
        self.draining = threading.Event()

    def drain(self, within: float) -> None:
        """Accept no more connections (serve_forever stops within its 0.5 s poll; those
        accepted meanwhile are answered); let the requests being answered finish,
        closing each connection once it waits for its next request (a client such as
        Prometheus then connects again, to the exporter that took over; a connection
        new here keeps its first request); return when none is left, or after
        ``within`` seconds."""
        self.draining.set()
        until = time.monotonic() + within
        # serve_forever stops within its poll interval (0.5 s); bounded all the same.
        stopping = threading.Thread(target=self.shutdown, name="drain", daemon=True)
        stopping.start()
        stopping.join(within)
        while time.monotonic() < until and self.connections.close_waiting():
            time.sleep(0.05)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection, if there is room (made by closing the oldest
        idle one); else it is closed at once."""
        conn = self.connections.admit(request)
        if conn is None:
            log.debug("%s: refused: %d connections answering", client_address,
                      self.connections.limit)
            self.shutdown_request(request)
            return
        threading.Thread(target=self._connection, args=(request, client_address, conn),
                         daemon=True).start()

    def _connection(self, request: Any, client_address: Any, conn: Conn) -> None:
        self.local.conn = conn
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.connections.leave(conn)
            self.shutdown_request(request)
            if conn.sock is not request:
                conn.sock.close()

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
            self.local.conn.sock = request  # closed for room: this socket now
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-request is no traceback."""
        log.debug("%s: request failed", client_address)


def exporter_main(listening: socket.socket, chan: socket.socket,
                  settings: ExporterSettings, parent_pid: int) -> NoReturn:
    """The exporter process: serve HTTP in threads, read the supervisor's frames here;
    when the supervisor's end closes, drain (the requests being answered finish) and
    exit; on SIGTERM at once."""
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
        try:
            os.nice(NICE)  # scrapes yield the CPU to the supervisor and its workers
        except OSError:
            pass
        where = listening.getsockname()
        for handler in logging.getLogger().handlers:
            handler.setFormatter(OneLineFormatter(
                f"vpartcollect[%(process)d] prometheus {where[0]}:{where[1]}: "
                "%(levelname)s: %(message)s"))
        exporter = Exporter(settings)
        server = Server(listening, exporter)
        ready = threading.Event()  # the board rebuilt: scrapes wait in the queue till then

        def serve() -> None:
            ready.wait(READY_SECONDS)
            server.serve_forever()

        threading.Thread(target=serve, name="http", daemon=True).start()
        # A whole frame of the largest size may sit behind the unread tail of another.
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=2 * wire.MAX_FRAME_BYTES)
        chan.setblocking(True)
        while data := chan.recv(1 << 20):
            unpacker.feed(data)
            for obj in unpacker:
                if obj == ["ready"]:
                    ready.set()
                    continue
                try:
                    exporter.frame(obj)
                except (ValueError, TypeError, KeyError, IndexError, AssertionError) as exc:
                    log.warning("prometheus: a frame left out: %s", exc)
        server.drain(DRAIN_SECONDS)
    except Exception as exc:  # one line; the supervisor starts us again
        log.error("prometheus exporter: %s: %s", type(exc).__name__, exc)
        code = 1
    os._exit(code)
