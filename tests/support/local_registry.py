"""One call that starts a ready-to-use local registry in any auth/TLS mode, for fixtures, demo and bench.

`local_registry(workdir, auth="token", tls=True)` yields a `LocalRegistry`: the docker-registry process, its
token server and CA when they apply, credentials for the client under test, and a `Pusher` to fill it.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

from tests.support.htpasswd import htpasswd_line
from tests.support.pusher import Credentials, PushedImage, Pusher, RegistryAuth
from tests.support.registry_process import (
    DEFAULT_BINARY,
    HtpasswdAuth,
    Notifications,
    RegistryProcess,
    RegistryTls,
    TokenAuth,
)
from tests.support.tls import LocalCA, client_verify
from tests.support.token_server import PULL, PULL_PUSH, Account, KeyReference, TokenServer

type AuthMode = Literal["none", "basic", "token"]

READER_USERNAME = "auditor"
PUSHER_USERNAME = "pusher"


@dataclass
class LocalRegistry:
    """A running registry and everything a test needs to talk to it.

    `credentials` are for the client under test (pull on every repository in token mode); the pusher uses its
    own account with push rights. In token mode the pusher's tokens are minted in-process, so
    `token_server.requests` only shows the client under test.
    """

    process: RegistryProcess
    auth_mode: AuthMode
    credentials: Credentials | None
    pusher_credentials: Credentials | None
    token_server: TokenServer | None
    ca_file: Path | None
    _pushers: list[Pusher] = field(default_factory=list, repr=False)
    _pusher: Pusher | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference."""
        return self.process.host

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def insecure(self) -> bool:
        """True when the registry speaks plain http."""
        return self.process.tls is None

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx `verify=` for this registry and its token realm (trusts the test CA when there is one)."""
        return client_verify(self.ca_file)

    @property
    def pusher(self) -> Pusher:
        if self._pusher is None:
            self._pusher = self.new_pusher()
        return self._pusher

    def new_pusher(self, credentials: Credentials | None = None, *, fetch_tokens: bool = False) -> Pusher:
        """A pusher with `credentials` (default: the pusher account); closed when the registry stops.

        In token mode, `fetch_tokens=True` gets tokens from the realm over HTTP (they appear in the token
        server's log and are subject to its grants); otherwise they are minted in-process.
        """
        chosen = credentials if credentials is not None else self.pusher_credentials
        auth: RegistryAuth | None = None
        if self.auth_mode != "none":
            minting = self.token_server if (self.auth_mode == "token" and not fetch_tokens) else None
            auth = RegistryAuth(credentials=chosen, verify=self.verify, token_server=minting)
        pusher = Pusher(self.url, verify=self.verify, auth=auth)
        self._pushers.append(pusher)
        return pusher

    def reference(self, repository: str, tag: str | None = None, digest: str | None = None) -> str:
        """An image reference on this registry, e.g. `127.0.0.1:PORT/team/app:1.0@sha256:…`."""
        text = f"{self.host}/{repository}"
        if tag is not None:
            text += f":{tag}"
        if digest is not None:
            text += f"@{digest}"
        return text

    def reference_of(self, image: PushedImage) -> str:
        return self.reference(image.repository, image.tag)

    def close_pushers(self) -> None:
        for pusher in self._pushers:
            pusher.close()
        self._pushers.clear()
        self._pusher = None


class RegistryOptions(TypedDict, total=False):
    """The modes of `local_registry` a test chooses (its defaults are those of `local_registry`)."""

    auth: AuthMode
    tls: bool
    token_server_tls: bool | None
    anonymous_pull: bool
    key_reference: KeyReference
    expires_in: int | None
    accounts: Mapping[str, Account] | None


@contextmanager
def local_registry(
    workdir: Path,
    *,
    auth: AuthMode = "none",
    tls: bool = False,
    token_server_tls: bool | None = None,
    anonymous_pull: bool = False,
    key_reference: KeyReference = "x5c",
    expires_in: int | None = 300,
    accounts: Mapping[str, Account] | None = None,
    binary: Path = DEFAULT_BINARY,
    notifications: Notifications | None = None,
) -> Iterator[LocalRegistry]:
    """Start a registry (and its token server) under `workdir`; everything stops when the block exits.

    `token_server_tls` defaults to `tls`. `accounts` adds token-server users (with per-repository grants) to
    the default reader and pusher accounts. `anonymous_pull` lets the token server issue pull tokens without
    credentials; otherwise anonymous token requests get 401. `notifications` makes the registry send its push
    events to a receiver (`digest-audit listen`).
    """
    realm_tls = tls if token_server_tls is None else token_server_tls
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        ca = LocalCA(workdir / "tls") if (tls or (auth == "token" and realm_tls)) else None
        registry_tls: RegistryTls | None = None
        if tls:
            assert ca is not None
            served = ca.issue_server_certificate("registry")
            registry_tls = RegistryTls(cert_file=served.cert_file, key_file=served.key_file, ca_file=ca.ca_file)

        credentials: Credentials | None = None
        pusher_credentials: Credentials | None = None
        token_server: TokenServer | None = None
        registry_auth: HtpasswdAuth | TokenAuth | None = None
        if auth != "none":
            credentials = Credentials(READER_USERNAME, secrets.token_urlsafe(12))
            pusher_credentials = Credentials(PUSHER_USERNAME, secrets.token_urlsafe(12))
        if auth == "basic":
            assert credentials is not None and pusher_credentials is not None
            htpasswd = workdir / "htpasswd"
            htpasswd.write_text("".join(f"{htpasswd_line(*pair)}\n" for pair in (credentials, pusher_credentials)))
            registry_auth = HtpasswdAuth(path=htpasswd)
        elif auth == "token":
            assert credentials is not None and pusher_credentials is not None
            token_accounts = {
                credentials.username: Account(credentials.password, {"*": PULL}),
                pusher_credentials.username: Account(pusher_credentials.password, {"*": PULL_PUSH}),
                **(accounts or {}),
            }
            realm_certificate = ca.issue_server_certificate("token-server") if (realm_tls and ca) else None
            token_server = TokenServer(
                accounts=token_accounts,
                anonymous={"*": PULL} if anonymous_pull else None,
                key_reference=key_reference,
                tls=realm_certificate,
                expires_in=expires_in,
            )
            stack.enter_context(token_server)
            registry_auth = TokenAuth(
                realm=token_server.realm,
                service=token_server.service,
                issuer=token_server.issuer,
                rootcertbundle=token_server.write_rootcertbundle(workdir / "token-rootcertbundle.pem"),
            )

        process = RegistryProcess(
            workdir / "registry", auth=registry_auth, tls=registry_tls, binary=binary, notifications=notifications
        )
        stack.enter_context(process)
        registry = LocalRegistry(
            process=process,
            auth_mode=auth,
            credentials=credentials,
            pusher_credentials=pusher_credentials,
            token_server=token_server,
            ca_file=ca.ca_file if ca is not None else None,
        )
        stack.callback(registry.close_pushers)
        yield registry
