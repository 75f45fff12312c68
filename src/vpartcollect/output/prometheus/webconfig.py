"""exporter-toolkit's web configuration file (the ``--web.config.file`` of every
Prometheus exporter): TLS and basic authentication with bcrypt hashes.

Read with YAML's safe loader. Unknown keys are an error, as the toolkit's strict
decoding makes them. Relative paths are relative to the file's directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

log = logging.getLogger(__name__)

_TOP = {"tls_server_config", "basic_auth_users", "http_server_config"}
_TLS = {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
        "max_version"}
_AUTH_TYPES = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
MAX_BYTES = 1 << 20


class WebConfigError(ValueError):
    """A web configuration problem, in one line."""


@dataclass(frozen=True)
class WebConfig:
    """What a web configuration file says: TLS (None: plain HTTP) and users."""

    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    files: tuple[str, ...] = ()  # cert, key, client CA: a change to them is a change


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WebConfigError(f"{where}: expected a mapping")
    return value


def _tls_files(path: Path, raw: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(path.parent / raw[key]) for key in ("cert_file", "key_file",
                                                         "client_ca_file")
                 if isinstance(raw.get(key), str) and raw[key])


def _tls(path: Path, raw: dict[str, Any]) -> ssl.SSLContext | None:
    unknown = set(raw) - _TLS
    if unknown:
        raise WebConfigError(f"tls_server_config: unknown key {sorted(unknown)[0]!r}")
    if not raw:
        return None
    files = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise WebConfigError(f"tls_server_config.{key}: expected a path")
        files[key] = None if not value else str(path.parent / value)
    if not files["cert_file"] or not files["key_file"]:
        raise WebConfigError("tls_server_config: cert_file and key_file are both required")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # the toolkit's default
    for key, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if key in raw:
            if raw[key] not in _VERSIONS:
                raise WebConfigError(f"tls_server_config.{key}: one of {', '.join(_VERSIONS)}")
            setattr(ctx, attr, _VERSIONS[raw[key]])
    try:
        ctx.load_cert_chain(files["cert_file"], files["key_file"])
        if files["client_ca_file"]:
            ctx.load_verify_locations(files["client_ca_file"])
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"tls_server_config: {exc.strerror or exc}"
                             if isinstance(exc, OSError) and exc.strerror
                             else f"tls_server_config: {exc}") from None
    # A client CA without a client_auth_type: require and verify (what giving one means).
    kind = raw.get("client_auth_type") or ("RequireAndVerifyClientCert"
                                           if files["client_ca_file"] else "NoClientCert")
    if kind not in _AUTH_TYPES:
        raise WebConfigError(f"tls_server_config.client_auth_type: one of "
                             f"{', '.join(_AUTH_TYPES)}")
    if kind != "NoClientCert" and not files["client_ca_file"]:
        raise WebConfigError(f"tls_server_config: client_auth_type {kind} needs client_ca_file")
    ctx.verify_mode = _AUTH_TYPES[kind]
    return ctx


def _users(raw: dict[str, Any]) -> dict[str, bytes]:
    users = {}
    for user, hashed in raw.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"basic_auth_users.{user}: expected a bcrypt hash")
        users[user] = hashed.encode()
    return users


def parse(text: str, path: Path) -> WebConfig:
    """A web configuration file's text -> WebConfig, or WebConfigError."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
    top = _mapping(raw, "the file")
    unknown = set(top) - _TOP
    if unknown:
        raise WebConfigError(f"unknown key {sorted(unknown)[0]!r}")
    tls = _mapping(top.get("tls_server_config"), "tls_server_config")
    return WebConfig(_tls(path, tls),
                     _users(_mapping(top.get("basic_auth_users"), "basic_auth_users")),
                     _tls_files(path, tls))


def load(path: str | Path) -> WebConfig:
    """Read and check the file; WebConfigError (naming the file) when it is bad."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise WebConfigError("larger than 1 MiB")
        return parse(data.decode(), path)
    except OSError as exc:
        raise WebConfigError(f"web_config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"web_config {path}: not UTF-8 text") from None
    except WebConfigError as exc:
        raise WebConfigError(f"web_config {path}: {exc}") from None


class Current:
    """The file as of now, re-read when it or a certificate, key or client CA file it
    names changed (each request asks, as exporter-toolkit reloads them per handshake): a
    file turned bad keeps the last good one in force, with one warning per change.

    ``first`` (read at start or at the last SIGHUP) is only the fallback: the first
    request reads the file again, so an exporter started again after a crash does not
    bring back users removed from the file since."""

    def __init__(self, path: str | Path, first: WebConfig) -> None:
        self.path = Path(path)
        self.config = first
        self.seen: tuple[tuple[int, int, int] | None, ...] | None = None
        self.lock = threading.Lock()

    def _stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_stat(path) for path in (str(self.path), *self.config.files))

    def get(self) -> WebConfig:
        """The configuration in force."""
        with self.lock:
            stamp = self._stamp()
            if stamp != self.seen:
                try:
                    self.config = load(self.path)
                except WebConfigError as exc:
                    log.warning("%s; the last good one stays in force", exc)
                self.seen = self._stamp()  # the files the config in force names
            return self.config


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


# Checked against this for an unknown user, so that a wrong user costs what a wrong
# password does: cost 10, as exporter-toolkit's dummy $2y$10$ (made once, at import).
DUMMY_COST = 10
_DUMMY = bcrypt.hashpw(b"vpartcollect", bcrypt.gensalt(DUMMY_COST))


class Authenticator:
    """Basic auth against bcrypt hashes, at most one bcrypt check per request and one
    at a time; verified outcomes cached by (user, hash, password) as exporter-toolkit
    does, so a scraper with the right password pays bcrypt once."""

    def __init__(self, size: int = 100) -> None:
        self.cache: dict[bytes, bool] = {}
        self.size = size
        self.lock = threading.Lock()  # one bcrypt check at a time
        self.checks = 0  # bcrypt checks made (a test counts them)

    def check(self, users: dict[str, bytes], user: str, password: str) -> bool:
        """Whether ``user``:``password`` is one of ``users``."""
        hashed = users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), hashed or b"-",
                                         password.encode()))).digest()
        known = self.cache.get(key)  # a cached outcome never waits for a bcrypt check
        if known is not None:
            return known
        with self.lock:
            self.checks += 1
            try:
                ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY) and hashed is not None
            except ValueError:  # a password past bcrypt's 72 bytes, a malformed hash
                ok = False
            if len(self.cache) >= self.size:
                self.cache.pop(next(iter(self.cache)), None)
            self.cache[key] = ok
            return ok
