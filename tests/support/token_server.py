"""A real token server implementing distribution's token spec, so bearer auth is exercised end to end.

It signs RS256 JWTs that docker-registry 2.8 verifies against its `rootcertbundle`, and it records every
request (scopes, which Authorization scheme arrived, never the secret) so tests can count token fetches per
scope and prove that credentials did or did not reach it.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import secrets
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socket import socket
from typing import Literal, override
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.tls import ServerCertificate

type AuthorizationKind = Literal["none", "basic", "bearer", "other"]
type KeyReference = Literal["x5c", "kid"]

PULL = frozenset({"pull"})
PULL_PUSH = frozenset({"pull", "push"})


def libtrust_key_id(public_key_der: bytes) -> str:
    """libtrust's key ID: base32 of the first 30 bytes of sha256(DER SubjectPublicKeyInfo), 12 groups of 4."""
    encoded = base64.b32encode(hashlib.sha256(public_key_der).digest()[:30]).decode("ascii")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class SigningKey:
    """An RSA key with a self-signed certificate; that certificate is the registry's `rootcertbundle`."""

    def __init__(self, common_name: str = "digest-audit test token signer") -> None:
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._private_key, hashes.SHA256())
        )
        public_der = self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = libtrust_key_id(public_der)
        self.x5c = [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode("ascii")]

    def write_bundle(self, path: Path) -> Path:
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def sign(self, claims: Mapping[str, object], reference: KeyReference) -> str:
        headers: dict[str, object] = {"x5c": self.x5c} if reference == "x5c" else {"kid": self.key_id}
        return jwt.encode(dict(claims), self._private_key, algorithm="RS256", headers=headers)


@dataclass(frozen=True)
class Account:
    """A user of the token server: a password and grants as {repository glob: actions}."""

    password: str
    grants: Mapping[str, Collection[str]] = field(default_factory=lambda: {"*": PULL})

    def __repr__(self) -> str:
        return f"Account(password=<hidden>, grants={dict(self.grants)!r})"


@dataclass(frozen=True)
class TokenRequest:
    """What one request to the token server carried; holds no secret, only which scheme was used."""

    method: str
    path: str
    service: str | None
    scopes: tuple[str, ...]
    authorization: AuthorizationKind
    username: str | None
    grant_type: str | None
    status: int


@dataclass(frozen=True)
class _Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> _Scope | None:
        # The type may carry a class (`repository(plugin)`); actions always follow the last `:`.
        type_part, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not type_part or not name:
            return None
        return cls(type_part, name, tuple(sorted({a for a in actions.split(",") if a})))


class TokenServer:
    """Serves `GET /token` (and `POST /token`) on 127.0.0.1; use as a context manager or call start()/stop().

    `anonymous=None` refuses requests without credentials (401); a mapping issues anonymous tokens with those
    grants (an empty mapping issues tokens that grant nothing, like Docker Hub does for private repositories).
    """

    def __init__(
        self,
        *,
        service: str = "digest-audit-registry",
        issuer: str = "digest-audit-token-issuer",
        accounts: Mapping[str, Account] | None = None,
        anonymous: Mapping[str, Collection[str]] | None = None,
        signing_key: SigningKey | None = None,
        key_reference: KeyReference = "x5c",
        tls: ServerCertificate | None = None,
        expires_in: int | None = 300,
        token_fields: Sequence[str] = ("token", "access_token"),
        fail_first: int = 0,
        fail_status: int = 503,
    ) -> None:
        self.service = service
        self.issuer = issuer
        self.accounts = dict(accounts or {})
        self.anonymous = anonymous
        self.signing_key = signing_key or SigningKey()
        self.key_reference: KeyReference = key_reference
        self.expires_in = expires_in
        self.token_fields = tuple(token_fields)
        self._tls = tls
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._failures_left = fail_first
        self._fail_status = fail_status
        self._refresh_tokens: dict[str, str] = {}
        self._server: _TokenHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> TokenServer:
        if self._server is not None:
            return self
        server = _TokenHTTPServer(("127.0.0.1", 0), _TokenHandler, self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="token-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("token server is not running")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    @property
    def realm(self) -> str:
        return f"{self.scheme}://{self.host}/token"

    def write_rootcertbundle(self, path: Path) -> Path:
        """The PEM file the registry's `auth.token.rootcertbundle` must point to."""
        return self.signing_key.write_bundle(path)

    # --- what tests observe and steer -----------------------------------------------------------------------

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def count(self, scope: str | None = None) -> int:
        """Requests in total, or those asking for `scope` in any action order (`pull,push` = `push,pull`)."""
        with self._lock:
            if scope is None:
                return len(self._requests)
            wanted = _Scope.parse(scope)
            return sum(1 for request in self._requests if wanted in map(_Scope.parse, request.scopes))

    def count_for_repository(self, name: str) -> int:
        """Requests with at least one scope on repository `name`, whatever the actions."""
        with self._lock:
            return sum(
                1
                for request in self._requests
                if any((parsed := _Scope.parse(s)) is not None and parsed.name == name for s in request.scopes)
            )

    def scope_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(scope for request in self._requests for scope in request.scopes)

    def reset(self) -> None:
        """Forget recorded requests and pending failures (settings such as expires_in stay)."""
        with self._lock:
            self._requests.clear()
            self._failures_left = 0

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next `count` requests with `status` (503 by default) before serving tokens again."""
        with self._lock:
            self._failures_left = count
            self._fail_status = status

    # --- issuing --------------------------------------------------------------------------------------------

    def mint(
        self,
        subject: str,
        scopes: Sequence[str],
        *,
        expires_in: int | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """A token granting exactly `scopes`, made in-process: neither recorded nor checked against grants.

        For test set-up (pushing) and for forging tokens the registry must refuse (wrong audience or issuer).
        """
        access = [self._access_entry(parsed) for parsed in map(_Scope.parse, scopes) if parsed is not None]
        return self._sign(subject, access, expires_in, audience=audience, issuer=issuer)

    def _access_entry(self, scope: _Scope) -> dict[str, object]:
        return {"type": scope.type, "name": scope.name, "actions": list(scope.actions)}

    def _granted(self, username: str | None, scopes: Sequence[str]) -> list[dict[str, object]]:
        if username is None:
            grants: Mapping[str, Collection[str]] = self.anonymous or {}
        else:
            grants = self.accounts[username].grants
        access: list[dict[str, object]] = []
        for text in scopes:
            scope = _Scope.parse(text)
            if scope is None or scope.type != "repository":
                continue
            allowed = {
                action
                for pattern, actions in grants.items()
                if fnmatch.fnmatchcase(scope.name, pattern)
                for action in actions
            }
            actions = [action for action in scope.actions if action in allowed or "*" in allowed]
            if actions:
                access.append({"type": scope.type, "name": scope.name, "actions": actions})
        return access

    def _sign(
        self,
        subject: str,
        access: list[dict[str, object]],
        expires_in: int | None,
        *,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> str:
        now = int(time.time())
        lifetime = expires_in if expires_in is not None else (self.expires_in or 60)
        claims = {
            "iss": issuer or self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            "exp": now + lifetime,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        return self.signing_key.sign(claims, self.key_reference)

    def _token_body(self, token: str, refresh_token: str | None) -> dict[str, object]:
        body: dict[str, object] = dict.fromkeys(self.token_fields, token)
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        body["issued_at"] = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return body

    def _handle(
        self, method: str, target: str, authorization: str | None, form: Mapping[str, list[str]]
    ) -> tuple[int, dict[str, object], dict[str, str]]:
        """One request, decided without I/O: returns (status, JSON body, extra headers)."""
        url = urlsplit(target)
        query = parse_qs(url.query)
        params = form if method == "POST" else query
        service = _first(params, "service")
        if method == "POST":
            scopes = tuple(s for text in params.get("scope", []) for s in text.split(" ") if s)
        else:
            scopes = tuple(params.get("scope", []))
        grant_type = _first(params, "grant_type") if method == "POST" else None
        kind, username, password = _parse_authorization(authorization)
        if method == "POST" and grant_type == "password":
            username, password = _first(params, "username"), _first(params, "password")

        status, body, headers, subject = self._decide(
            method, url.path, service, kind, username, password, grant_type, params
        )
        if status == HTTPStatus.OK:
            refresh = None
            if subject is not None and _first(params, "access_type") == "offline":
                refresh = secrets.token_urlsafe(24)
                with self._lock:
                    self._refresh_tokens[refresh] = subject
            token = self._sign(subject or "", self._granted(subject, scopes), None)
            body = self._token_body(token, refresh)
        with self._lock:
            self._requests.append(
                TokenRequest(
                    method=method,
                    path=url.path,
                    service=service,
                    scopes=scopes,
                    authorization=kind,
                    username=username,
                    grant_type=grant_type,
                    status=int(status),
                )
            )
        return status, body, headers

    def _decide(
        self,
        method: str,
        path: str,
        service: str | None,
        kind: AuthorizationKind,
        username: str | None,
        password: str | None,
        grant_type: str | None,
        params: Mapping[str, list[str]],
    ) -> tuple[int, dict[str, object], dict[str, str], str | None]:
        with self._lock:
            if self._failures_left > 0:
                self._failures_left -= 1
                return self._fail_status, _error("UNAVAILABLE", "token service unavailable"), {}, None
        if path != "/token" or method not in ("GET", "POST"):
            return HTTPStatus.NOT_FOUND, _error("NOT_FOUND", "no such endpoint"), {}, None
        if service != self.service:
            return HTTPStatus.BAD_REQUEST, _error("INVALID_REQUEST", "unknown or missing service"), {}, None
        challenge = {"WWW-Authenticate": f'Basic realm="{self.realm}"'}
        if method == "POST" and grant_type == "refresh_token":
            with self._lock:
                subject = self._refresh_tokens.get(_first(params, "refresh_token") or "")
            if subject is None:
                return HTTPStatus.UNAUTHORIZED, _error("UNAUTHORIZED", "invalid refresh token"), {}, None
            return HTTPStatus.OK, {}, {}, subject
        if method == "POST" and grant_type != "password":
            return HTTPStatus.BAD_REQUEST, _error("UNSUPPORTED", "unsupported grant_type"), {}, None
        if kind == "none" and method == "GET":
            if self.anonymous is None:
                return (
                    HTTPStatus.UNAUTHORIZED,
                    _error("UNAUTHORIZED", "authentication required"),
                    challenge,
                    None,
                )
            return HTTPStatus.OK, {}, {}, None
        account = self.accounts.get(username or "")
        if account is None or password is None or not secrets.compare_digest(account.password, password):
            return (
                HTTPStatus.UNAUTHORIZED,
                _error("UNAUTHORIZED", "incorrect username or password"),
                challenge,
                None,
            )
        return HTTPStatus.OK, {}, {}, username


def _first(params: Mapping[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[0] if values else None


def _error(code: str, message: str) -> dict[str, object]:
    return {"errors": [{"code": code, "message": message}]}


def _parse_authorization(header: str | None) -> tuple[AuthorizationKind, str | None, str | None]:
    if not header:
        return "none", None, None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return "bearer", None, None
    if scheme.lower() != "basic":
        return "other", None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "basic", None, None
    username, separator, password = decoded.partition(":")
    return "basic", username, password if separator else None


class _TokenHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        token_server: TokenServer,
    ) -> None:
        self.token_server = token_server
        self._ssl_context = token_server._tls.server_context() if token_server._tls is not None else None
        super().__init__(address, handler)

    @override
    def get_request(self) -> tuple[socket, tuple[str, int]]:
        connection, address = super().get_request()
        if self._ssl_context is not None:
            # The handshake happens later in the handler's thread so a stalled client cannot block accept().
            connection = self._ssl_context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    @override
    def handle_error(self, request: socket | tuple[bytes, socket], client_address: object) -> None:
        # Clients that reject our certificate or hang up are part of the tests; anything else is a bug here.
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _TokenHTTPServer

    @override
    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()

    def do_GET(self) -> None:
        self._respond("GET", {})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", errors="replace") if length else ""
        self._respond("POST", parse_qs(raw))

    def _respond(self, method: str, form: Mapping[str, list[str]]) -> None:
        status, body, headers = self.server.token_server._handle(
            method, self.path, self.headers.get("Authorization"), form
        )
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    @override
    def log_message(self, format: str, *args: object) -> None:
        # The request line holds only scopes, but stderr noise helps nobody; requests are recorded instead.
        return
