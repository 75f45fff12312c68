"""The exporter's HTTP side, on a real socket: /metrics, /, 404, gzip; exporter-toolkit's
web configuration (TLS with the configured certificate, basic auth with bcrypt hashes, at
most one bcrypt check per request, the file re-read when it changes, a bad one kept out);
what a client may cost (a request head over the cap, connections past the bound); a body
rendered once per board change."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from vpartcollect.config import ConfigError, build
from vpartcollect.output.prometheus import webconfig
from vpartcollect.output.prometheus.limits import (
    HEAD_LIMIT,
    MAX_CONNECTIONS,
    Conn,
    Connections,
    HeadReader,
    HeadTooLarge,
    oldest_idle,
)
from vpartcollect.output.prometheus.server import (
    Exporter,
    ExporterSettings,
    Server,
    accepts_gzip,
)
from vpartcollect.output.prometheus.webconfig import WebConfigError, load


def serve(web: Path | None) -> tuple[Server, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    first = load(web) if web else None
    exporter = Exporter(ExporterSettings(10.0, False, 1, 30.0, str(web) if web else None,
                                         first))
    server = Server(sock, exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, sock.getsockname()[1]


@pytest.fixture
def plain() -> Iterator[int]:
    server, port = serve(None)
    yield port
    server.shutdown()


def get(port: int, path: str, headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection("localhost", port, context=tls, timeout=10) if tls
        else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    conn.close()
    return out


def test_metrics_landing_page_404_and_gzip(plain: int) -> None:
    status, head, body = get(plain, "/metrics")
    assert status == 200 and head["content-type"].startswith("text/plain; version=0.0.4")
    assert b"libvirt_up" in body
    status, head, zipped = get(plain, "/metrics", {"Accept-Encoding": "gzip"})
    assert head["content-encoding"] == "gzip" and gzip.decompress(zipped) == body
    status, head, body = get(plain, "/metrics", {
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"})
    assert head["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, head, body = get(plain, "/")
    assert status == 200 and b'href="/metrics"' in body
    assert get(plain, "/metricsx")[0] == 404 and get(plain, "/favicon.ico")[0] == 404


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    return tmp_path


def web_yml(certs: Path, users: dict[str, str]) -> Path:
    hashed = {u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(10)).decode()
              for u, p in users.items()}
    lines = ["tls_server_config:", "  cert_file: cert.pem", "  key_file: key.pem",
             "basic_auth_users:", *(f"  {u}: '{h}'" for u, h in hashed.items())]
    path = certs / "web.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode())
            .decode()}


def test_tls_with_the_configured_certificate_and_basic_auth(certs: Path) -> None:
    server, port = serve(web_yml(certs, {"prom": "s3cret"}))
    try:
        trust = ssl.create_default_context(cafile=str(certs / "cert.pem"))
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                trust.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(
                (certs / "cert.pem").read_text())
        assert get(port, "/metrics", tls=trust)[0] == 401
        status, head, _ = get(port, "/metrics", basic("prom", "wrong"), tls=trust)
        assert status == 401 and head["www-authenticate"].startswith("Basic")
        status, _, body = get(port, "/metrics", basic("prom", "s3cret"), tls=trust)
        assert status == 200 and b"libvirt_up" in body
        with pytest.raises(ssl.SSLError):  # plain TLS without trusting our certificate
            get(port, "/metrics", tls=ssl.create_default_context())
    finally:
        server.shutdown()


def test_a_wrong_password_costs_one_bcrypt_check_and_a_right_one_is_cached(
        certs: Path) -> None:
    server, port = serve(web_yml(certs, {"prom": "s3cret"}))
    trust = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    auth = server.exporter.auth
    try:
        for _ in range(5):
            assert get(port, "/metrics", basic("prom", "s3cret"), tls=trust)[0] == 200
        assert auth.checks == 1
        for i in range(5):
            assert get(port, "/metrics", basic("prom", f"guess{i}"), tls=trust)[0] == 401
        assert auth.checks == 6  # one each, never more
        for _ in range(3):  # an unknown user costs one check too (no user oracle)
            assert get(port, "/metrics", basic("nobody", "x"), tls=trust)[0] == 401
        assert auth.checks == 7
        long = "x" * 200  # past bcrypt's 72 bytes: refused, no traceback
        assert get(port, "/metrics", basic("prom", long), tls=trust)[0] == 401
    finally:
        server.shutdown()


def test_the_file_is_re_read_per_request_and_a_bad_one_keeps_the_last_good(
        certs: Path) -> None:
    web = web_yml(certs, {"prom": "one"})
    server, port = serve(web)
    trust = ssl.create_default_context(cafile=str(certs / "cert.pem"))
    try:
        assert get(port, "/metrics", basic("prom", "one"), tls=trust)[0] == 200
        web_yml(certs, {"prom": "two"})
        assert get(port, "/metrics", basic("prom", "one"), tls=trust)[0] == 401
        assert get(port, "/metrics", basic("prom", "two"), tls=trust)[0] == 200
        web.write_text("basic_auth_users: [not, a, mapping]\n")
        assert get(port, "/metrics", basic("prom", "two"), tls=trust)[0] == 200
    finally:
        server.shutdown()


def test_a_renewed_certificate_is_presented_at_the_next_handshake(certs: Path) -> None:
    """Review of issue 26: the file was re-read only when web.yml changed; a certificate
    renewed in place (web.yml untouched) was never picked up (exporter-toolkit reloads
    the files per handshake)."""
    server, port = serve(web_yml(certs, {}))

    def presented() -> bytes:
        trust = ssl.create_default_context(cafile=str(certs / "cert.pem"))
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                trust.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    try:
        assert presented() == ssl.PEM_cert_to_DER_cert((certs / "cert.pem").read_text())
        new = certs / "new"
        new.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "2", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost", "-keyout", str(new / "key.pem"),
                        "-out", str(new / "cert.pem")], check=True, capture_output=True)
        (new / "key.pem").replace(certs / "key.pem")
        (new / "cert.pem").replace(certs / "cert.pem")
        assert presented() == ssl.PEM_cert_to_DER_cert((certs / "cert.pem").read_text())
    finally:
        server.shutdown()


@pytest.mark.parametrize("text, why", [
    ("tls_server_config:\n  cert_file: nothere.pem\n  key_file: nothere.pem\n",
     "No such file"),
    ("tls_server_config:\n  cert_file: a.pem\n", "cert_file and key_file are both required"),
    ("basic_auth_users:\n  prom: plaintext\n", "expected a bcrypt hash"),
    ("basic_auth_user:\n  prom: x\n", "unknown key 'basic_auth_user'"),
    ("a: [b\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),  # safe loader
])
def test_a_bad_web_config_is_one_line_naming_the_file(tmp_path: Path, text: str,
                                                       why: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as err:
        load(path)
    assert why in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=why):
        build({"prometheus": "127.0.0.1:9177", "web_config": str(path)})


def test_a_request_head_over_the_cap_gets_431_and_a_normal_scrape_still_works(
        plain: int) -> None:
    """Fewer than http.server's 100 lines, far more than HEAD_LIMIT bytes: refused."""
    headers = "".join(f"X-Junk-{i}: {'a' * 2000}\r\n" for i in range(50))  # 100 KB
    assert len(headers) > HEAD_LIMIT
    with socket.create_connection(("127.0.0.1", plain), timeout=10) as flood:
        with contextlib.suppress(OSError):  # the server may close before it is all sent
            flood.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        status, _, body = get(plain, "/metrics")  # meanwhile
        assert status == 200 and b"libvirt_up" in body
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := flood.recv(65536):
                answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    assert b"libvirt_up" not in answer
    modest = {f"X-Tag-{i}": "b" * 200 for i in range(40)}  # 8 KB: a scraper's worst
    assert get(plain, "/metrics", modest)[0] == 200


def test_the_oldest_admitted_goes_first_whatever_order_its_thread_ran_in() -> None:
    """A loaded run: past the bound, the 6th connection opened stayed open while a younger
    one was closed. Its thread had marked it idle after the younger one's had (threads
    start in any order on a busy host), and idle was counted from then."""
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        conns = Connections(limit=2)
        first, second = (conns.admit(a) for a, _ in pairs[:2])
        assert first is not None and second is not None
        conns.idle(second)  # the second one's thread runs first
        conns.idle(first)
        conns.admit(pairs[2][0])
        assert conns.open[0] is second and first not in conns.open
        conns.busy(second)
        conns.idle(second)  # answered since: idle from now, younger than the third
        conns.admit(pairs[0][1])
        assert second in conns.open and len(conns.open) == 2
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_past_the_connection_bound_the_oldest_silent_one_is_closed(plain: int) -> None:
    silent = [socket.create_connection(("127.0.0.1", plain), timeout=5)
              for _ in range(MAX_CONNECTIONS + 5)]
    try:
        status, _, body = get(plain, "/metrics")
        assert status == 200 and b"libvirt_up" in body
        assert silent[0].recv(1) == b""  # closed for room (else: a timeout here)
        assert silent[5].recv(1) == b""
    finally:
        for sock in silent:
            sock.close()


def test_a_body_is_rendered_once_per_board_change_and_format(plain: int) -> None:
    exporter = Exporter(ExporterSettings(10.0, False, 1, 30.0))
    first = [exporter.render(None) for _ in range(3)]
    assert exporter.renders == 1 and first[0] == first[1] == first[2]
    zipped, _ = exporter.render(None, gzipped=True)
    assert gzip.decompress(zipped) == first[0][0] and exporter.renders == 1
    exporter.render("application/openmetrics-text; version=1.0.0")
    assert exporter.renders == 2
    exporter.frame(["collector", {"domains": 7.0}, 100.0])
    body, _ = exporter.render(None)
    assert exporter.renders == 3 and b"vpartcollect_domains 7.0" in body


def test_the_head_reader_keeps_pipelined_requests_and_the_budget_is_per_head() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader = HeadReader(ours, limit=64, idle=5.0, head=5.0)
        theirs.sendall(b"GET / HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
        reader.begin()
        assert reader.readline(65537) == b"GET / HTTP/1.1\r\n"
        assert reader.readline() == b"\r\n"
        reader.begin()  # the next head, already here: a fresh budget
        assert reader.readline(65537) == b"GET /metrics HTTP/1.1\r\n"
        assert reader.readline() == b"\r\n"
        reader.begin()
        theirs.sendall(b"X: " + b"a" * 100)
        with pytest.raises(HeadTooLarge):
            reader.readline(65537)


def test_room_is_made_by_closing_the_connection_idle_longest() -> None:
    a, b, c = (Conn(socket.socket(), idle_since=t) for t in (5.0, 1.0, None))
    try:
        assert oldest_idle([a, b, c]) is b and oldest_idle([c]) is None
    finally:
        for conn in (a, b, c):
            conn.sock.close()


def test_gzip_refused_by_the_client_is_not_sent(plain: int) -> None:
    """Review of issue 26: ``gzip;q=0`` (gzip refused) was answered in gzip."""
    status, head, body = get(plain, "/metrics", {"Accept-Encoding": "gzip;q=0, identity"})
    assert status == 200 and "content-encoding" not in head and b"libvirt_up" in body


@pytest.mark.parametrize("header, gzipped", [
    (None, False), ("", False), ("gzip", True), ("deflate, gzip;q=0.5", True),
    ("gzip;q=0", False), ("gzip; q=0.0, identity", False), ("*", True), ("*;q=0", False),
    ("identity", False), ("GZIP", True), ("gzip;q=x", False), ("x-gzip", True),
])
def test_gzip_only_when_the_client_takes_it(header: str | None, gzipped: bool) -> None:
    assert accepts_gzip(header) is gzipped


def test_an_unknown_user_costs_a_bcrypt_check_of_the_toolkits_cost() -> None:
    """Review of issue 26: the dummy hash an unknown user is checked against was cost 4
    (16 times cheaper than the toolkit's $2y$10$: an unknown user told apart by time)."""
    assert webconfig._DUMMY.split(b"$")[2] == b"10"
